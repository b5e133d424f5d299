/* AWS Signature Version 4 for the viewer's API calls (headers) and its signaling WebSocket
 * (a presigned URL), with SHA-256 and HMAC in plain JS: WebCrypto (crypto.subtle) only
 * exists in secure contexts, and a self-hosted server is often reached over plain http on a
 * LAN address. */

const SHA256_K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

function sha256(bytes) {
  const length = bytes.length;
  const padded = new Uint8Array(((length + 9 + 63) >> 6) << 6);
  padded.set(bytes);
  padded[length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(length / 0x20000000));
  view.setUint32(padded.length - 4, (length << 3) >>> 0);
  const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const w = new Uint32Array(64);
  const ror = (x, n) => (x >>> n) | (x << (32 - n));
  for (let offset = 0; offset < padded.length; offset += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(offset + 4 * i);
    for (let i = 16; i < 64; i++) {
      const s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    let [a, b, c, d, e, f, g, k] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (k + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g))
                  + SHA256_K[i] + w[i]) | 0;
      const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      k = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  h.forEach((word, i) => outView.setUint32(4 * i, word));
  return out;
}

function hmacSha256(key, message) {
  if (key.length > 64) key = sha256(key);
  const inner = new Uint8Array(64 + message.length);
  const outer = new Uint8Array(64 + 32);
  for (let i = 0; i < 64; i++) {
    inner[i] = (key[i] || 0) ^ 0x36;
    outer[i] = (key[i] || 0) ^ 0x5c;
  }
  inner.set(message, 64);
  outer.set(sha256(inner), 64);
  return sha256(outer);
}

const utf8 = (text) => new TextEncoder().encode(text);
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/** The key that signs a day's requests in a region (service kinesisvideo). */
function signingKey(credentials, date, region) {
  let key = utf8('AWS4' + credentials.secretAccessKey);
  for (const part of [date, region, 'kinesisvideo', 'aws4_request']) key = hmacSha256(key, utf8(part));
  return key;
}

/** {amzDate, scope, signature of canonicalRequest} for `now`. */
function sign(canonicalRequest, credentials, now) {
  const amzDate = now.toISOString().replace(/[-:]|\.\d{3}/g, '');
  const date = amzDate.slice(0, 8);
  const region = credentials.region || 'us-east-1';
  const scope = `${date}/${region}/kinesisvideo/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope,
    hex(sha256(utf8(canonicalRequest(amzDate, scope))))].join('\n');
  return { amzDate, scope, signature: hex(hmacSha256(signingKey(credentials, date, region),
    utf8(stringToSign))) };
}

/** SigV4 headers for a POST of `body` to `url` (service kinesisvideo). */
export function signRequest(url, body, credentials, now = new Date()) {
  // The browser sends Host itself, as url.host (no port for the scheme's default).
  const { host, pathname } = new URL(url, location.href);
  // Temporary keys send their session token, signed with the rest, as the SDKs do.
  const token = credentials.sessionToken;
  const signedHeaders = token ? 'host;x-amz-date;x-amz-security-token' : 'host;x-amz-date';
  const { amzDate, scope, signature } = sign((amzDate) => ['POST',
    pathname.split('/').map((part) => encodeURIComponent(decodeURIComponent(part))).join('/'),
    '', `host:${host}\nx-amz-date:${amzDate}\n` +
      (token ? `x-amz-security-token:${token}\n` : ''), signedHeaders,
    hex(sha256(utf8(body)))].join('\n'), credentials, now);
  return {
    'x-amz-date': amzDate,
    ...(token ? { 'x-amz-security-token': token } : {}),
    authorization: `AWS4-HMAC-SHA256 Credential=${credentials.accessKeyId}/${scope}, ` +
      `SignedHeaders=${signedHeaders}, Signature=${signature}`,
  };
}

// RFC 3986: encodeURIComponent leaves !'()* alone, SigV4 encodes them.
const rfc3986 = (text) => encodeURIComponent(text)
  .replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());

/** `url` (a ws:// or wss:// URL without a query) with `params` and, given credentials, a
 * SigV4 query signature, as the WebRTC SDKs open the signaling WebSocket. */
export function presignUrl(url, params, credentials, now = new Date()) {
  const { protocol, host, pathname } = new URL(url);
  const path = pathname || '/';
  const query = (extra) => Object.entries({ ...params, ...extra })
    .map(([key, value]) => [rfc3986(key), rfc3986(String(value))])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([key, value]) => `${key}=${value}`).join('&');
  if (!credentials) return `${protocol}//${host}${path}?${query({})}`;
  let fields = null;
  const { signature } = sign((amzDate, scope) => {
    fields = {
      'X-Amz-Algorithm': 'AWS4-HMAC-SHA256',
      'X-Amz-Credential': `${credentials.accessKeyId}/${scope}`,
      'X-Amz-Date': amzDate,
      'X-Amz-Expires': '299',
      'X-Amz-SignedHeaders': 'host',
      // temporary keys: the token is signed with the rest, as the SDKs do
      ...(credentials.sessionToken ? { 'X-Amz-Security-Token': credentials.sessionToken } : {}),
    };
    return ['GET', path, query(fields), `host:${host}\n`, 'host', hex(sha256(utf8('')))]
      .join('\n');
  }, credentials, now);
  return `${protocol}//${host}${path}?${query(fields)}&X-Amz-Signature=${signature}`;
}
