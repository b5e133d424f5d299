/* One signaling channel's live page (#/channel/<name>): the browser joins the channel as a
 * VIEWER with its own RTCPeerConnection, speaking the signaling protocol AWS's WebRTC SDKs
 * speak: DescribeSignalingChannel, GetSignalingChannelEndpoint (WSS and HTTPS, role VIEWER),
 * GetIceServerConfig, then the WebSocket (presigned like the SDKs' URLs when the user gave
 * keys): our SDP_OFFER to the master, its SDP_ANSWER and ICE_CANDIDATEs back, ours trickled
 * to it. GO_AWAY (the server ends the connection) means join again. */

import { api } from './api.js';
import { loadCredentials } from './credentials.js';
import { $, el, isDenied, showError } from './dom.js';
import { presignUrl } from './sigv4.js';

const REJOIN_DELAY_MS = 1000;
const PEER_STATES = {  // RTCPeerConnection.connectionState, in words
  new: 'Waiting for the master…', connecting: 'Connecting to the master…',
  connected: 'Live', disconnected: 'Interrupted…', failed: 'No route to the master',
  closed: 'Closed',
};

let session = null;  // the channel on screen

export function showChannel(name) {
  $('#channel-view').hidden = false;
  document.title = `${name} · live · kvslite`;
  $('#crumbs').replaceChildren(el('a', { href: '#/', text: 'Channels' }), ' / ', name);
  stopLive();
  session = new LiveSession(name);
  session.join();
  $('#channel-view').dataset.ready = 'true';
}

/** Leaves the channel: the page is being left or joined again. */
export function stopLive() {
  session?.close();
  session = null;
  const video = $('#live-video');
  video.srcObject = null;
  setState('closed', '');
}

export function setupLive() {
  $('#live-reconnect').addEventListener('click', () => {
    if (session) showChannel(session.name);
  });
}

function setState(state, text) {
  const badge = $('#live-state');
  badge.dataset.state = state;
  badge.textContent = text;
}

/** A viewer ClientId the server accepts ([a-zA-Z0-9_.-], not AWS_...); crypto.randomUUID
 * needs a secure context, a LAN http:// page is not one. */
function randomClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return 'viewer-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The endpoint's path on this page's origin: the viewer only talks to its own server. */
function onThisOrigin(url, scheme) {
  return `${scheme}//${location.host}${new URL(url).pathname.replace(/\/$/, '')}`;
}

/** IceServerList (GetIceServerConfig) as RTCPeerConnection's iceServers. */
const iceServers = (list) => (list || []).map((server) => ({
  urls: server.Uris,
  ...(server.Username ? { username: server.Username, credential: server.Password } : {}),
}));

class LiveSession {
  constructor(name) {
    this.name = name;
    this.clientId = randomClientId();
    this.abort = new AbortController();
    this.pc = null;
    this.ws = null;
    this.early = [];  // the master's ICE candidates that came before its answer
    this.sent = 0;    // correlation ids, so a failed message earns a STATUS_RESPONSE
  }

  get closed() { return this.abort.signal.aborted; }

  close() {
    this.abort.abort();
    this.hangUp();
  }

  hangUp() {
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
    }
    this.pc?.close();
    this.ws = this.pc = null;
    this.early = [];
  }

  async join() {
    setState('connecting', 'Joining the channel…');
    const signal = this.abort.signal;
    try {
      const { ChannelInfo: info } = await api('/describeSignalingChannel',
        { ChannelName: this.name }, { signal });
      const arn = info.ChannelARN;
      const { ResourceEndpointList: endpoints } = await api('/getSignalingChannelEndpoint', {
        ChannelARN: arn,
        SingleMasterChannelEndpointConfiguration: { Protocols: ['WSS', 'HTTPS'], Role: 'VIEWER' },
      }, { signal });
      const url = Object.fromEntries(endpoints.map((e) => [e.Protocol, e.ResourceEndpoint]));
      const ice = await api(`${onThisOrigin(url.HTTPS, location.protocol)}/v1/get-ice-server-config`,
        { ChannelARN: arn, ClientId: this.clientId, Service: 'TURN' }, { signal });
      if (this.closed) return;
      const wsScheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      this.connect(arn, onThisOrigin(url.WSS, wsScheme), iceServers(ice.IceServerList));
    } catch (error) {
      this.fail(error);
    }
  }

  connect(arn, wsUrl, servers) {
    const pc = this.pc = new RTCPeerConnection({ iceServers: servers });
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const media = new MediaStream();
    pc.ontrack = ({ track }) => {
      media.addTrack(track);
      const video = $('#live-video');
      if (video.srcObject !== media) video.srcObject = media;
      video.play().catch(() => {});  // muted: autoplay is allowed
    };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) this.send('ICE_CANDIDATE', candidate.toJSON());
    };
    pc.onconnectionstatechange = () => {
      if (pc === this.pc) setState(pc.connectionState, PEER_STATES[pc.connectionState]);
    };
    const query = { 'X-Amz-ChannelARN': arn, 'X-Amz-ClientId': this.clientId };
    const ws = this.ws = new WebSocket(presignUrl(wsUrl, query, loadCredentials()));
    ws.onopen = () => this.offer().catch((error) => this.fail(error));
    ws.onmessage = (event) => this.receive(event.data).catch((error) => this.fail(error));
    ws.onclose = () => this.signalingClosed(ws);
  }

  async offer() {
    setState('new', PEER_STATES.new);
    await this.pc.setLocalDescription(await this.pc.createOffer());
    this.send('SDP_OFFER', this.pc.localDescription.toJSON());
  }

  /** A message to the master (a viewer names no recipient); the payload is base64 JSON. */
  send(action, payload) {
    if (this.ws?.readyState !== WebSocket.OPEN) return;
    this.ws.send(JSON.stringify({ action, correlationId: `${this.clientId}-${++this.sent}`,
      messagePayload: btoa(JSON.stringify(payload)) }));
  }

  async receive(text) {
    const message = JSON.parse(text);
    const payload = message.messagePayload ? JSON.parse(atob(message.messagePayload)) : null;
    const pc = this.pc;
    if (!pc) return;  // a message that crossed our hang-up
    switch (message.messageType) {
      case 'SDP_ANSWER':
        await pc.setRemoteDescription(payload);
        for (const candidate of this.early.splice(0)) await pc.addIceCandidate(candidate);
        break;
      case 'ICE_CANDIDATE':
        if (pc.remoteDescription) await pc.addIceCandidate(payload);
        else this.early.push(payload);
        break;
      case 'GO_AWAY':
      case 'RECONNECT_ICE_SERVER':
        this.rejoin();
        break;
      case 'STATUS_RESPONSE': {
        const status = message.statusResponse || {};
        showError({ code: status.errorType, message: status.description || 'refused' });
        break;
      }
      default:  // unknown kinds are ignored, as the SDKs do
    }
  }

  /** The server ended the connection (GO_AWAY): join again, from DescribeSignalingChannel. */
  rejoin() {
    this.hangUp();
    setState('reconnecting', 'Reconnecting…');
    setTimeout(() => { if (!this.closed) this.join(); }, REJOIN_DELAY_MS);
  }

  signalingClosed(ws) {
    if (ws !== this.ws || this.closed) return;
    if (this.pc?.connectionState === 'connected') return;  // the video needs it no more
    // A refused upgrade shows the page no status: name the likely reasons.
    this.fail(new Error('The signaling service closed the connection (refused keys, a ' +
      'policy that does not allow ConnectAsViewer, a channel being deleted, or all its ' +
      'viewers connected).'));
  }

  fail(error) {
    if (this.closed || error.name === 'AbortError') return;
    this.hangUp();
    setState('failed', isDenied(error) ? 'Not allowed' : 'Not connected');
    showError(error);
  }
}
