// One peer of a KVS WebRTC session, as AWS's example app runs it, pointed at kvslite.
//
// The page's query says who it is: endpoint, region, accessKeyId, secretAccessKey,
// channel, role (MASTER or VIEWER), clientId (viewers), signalingSecretAccessKey and
// wssEndpoint (below). The master sends its camera (Chromium's fake one) to each viewer that
// offers; the viewer offers to receive video. ICE goes through the TURN servers
// GetIceServerConfig hands out only ('relay'). What happens lands in window.peer,
// which the test reads.
//
// Ingestion, as the example's "auto-determine" does it: when the channel's media storage is
// ENABLED, the master sends its camera and microphone to the storage session instead
// (JoinStorageSession on the WEBRTC endpoint, retried until the session's offer arrives).
import { KinesisVideoClient, DescribeSignalingChannelCommand, GetSignalingChannelEndpointCommand,
    DescribeMediaStorageConfigurationCommand } from '@aws-sdk/client-kinesis-video';
import { KinesisVideoSignalingClient, GetIceServerConfigCommand }
    from '@aws-sdk/client-kinesis-video-signaling';
import { KinesisVideoWebRTCStorageClient, JoinStorageSessionCommand }
    from '@aws-sdk/client-kinesis-video-webrtc-storage';
import { Role, SignalingClient } from 'amazon-kinesis-video-streams-webrtc';

const query = new URLSearchParams(location.search);
const options = Object.fromEntries(query.entries());
const credentials = { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey };
// signalingSecretAccessKey, when given, signs the WebSocket URL only: the tests' way to get a
// wrong signature past the HTTPS calls to the WebSocket service
const signalingCredentials = { ...credentials, secretAccessKey: options.signalingSecretAccessKey || options.secretAccessKey };

const peer = window.peer = {
    role: options.role,
    signaling: 'new',          // new, open, closed
    connectionState: 'new',    // the RTCPeerConnection's
    framesDecoded: 0,          // inbound video (viewer)
    framesEncoded: 0,          // outbound video (master)
    iceServers: null,          // what GetIceServerConfig returned, for the test to check
    wssEndpoint: null,
    ingestion: false,          // media storage ENABLED: the master joins the storage session
    joins: 0,                  // JoinStorageSession calls made (ingestion)
    storageOffers: 0,          // SDP offers from the storage session (no senderClientId)
    audioPacketsSent: 0,       // outbound audio (ingestion)
    codecs: [],                // the outbound codecs' MIME types
    errors: [],
};
// An AWS SDK error says its name (AccessDeniedException); a WebSocket's error event only its type.
const describe = error => (error instanceof Event ? `${error.type} event` : `${error.name}: ${error.message}`);
const fail = (where, error) => peer.errors.push(`${where}: ${describe(error)}`);

async function channelEndpoints() {
    const kinesisVideo = new KinesisVideoClient({ region: options.region, endpoint: options.endpoint, credentials });
    const described = await kinesisVideo.send(new DescribeSignalingChannelCommand({ ChannelName: options.channel }));
    const channelARN = described.ChannelInfo.ChannelARN;
    if (options.role === 'MASTER') {
        const storage = await kinesisVideo.send(new DescribeMediaStorageConfigurationCommand({ ChannelARN: channelARN }));
        const { Status, StreamARN } = storage.MediaStorageConfiguration;
        peer.ingestion = Status === 'ENABLED' && StreamARN !== null;  // the example's test
    }
    const answer = await kinesisVideo.send(new GetSignalingChannelEndpointCommand({
        ChannelARN: channelARN,
        SingleMasterChannelEndpointConfiguration: {
            Protocols: peer.ingestion ? ['WSS', 'HTTPS', 'WEBRTC'] : ['WSS', 'HTTPS'], Role: options.role },
    }));
    const byProtocol = Object.fromEntries(answer.ResourceEndpointList.map(e => [e.Protocol, e.ResourceEndpoint]));
    return { channelARN, https: byProtocol.HTTPS, wss: byProtocol.WSS, webrtc: byProtocol.WEBRTC };
}

async function turnServers(channelARN, httpsEndpoint) {
    const signaling = new KinesisVideoSignalingClient({ region: options.region, endpoint: httpsEndpoint, credentials });
    const answer = await signaling.send(new GetIceServerConfigCommand({ ChannelARN: channelARN }));
    peer.iceServers = answer.IceServerList;
    return answer.IceServerList.map(s => ({ urls: s.Uris, username: s.Username, credential: s.Password }));
}

function newPeerConnection(iceServers, sendCandidate) {
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
    pc.addEventListener('icecandidate', ({ candidate }) => candidate && sendCandidate(candidate));
    pc.addEventListener('connectionstatechange', () => { peer.connectionState = pc.connectionState; });
    setInterval(() => countFrames(pc), 250);
    return pc;
}

async function countFrames(pc) {
    const stats = await pc.getStats();
    stats.forEach(report => {
        if (report.type === 'inbound-rtp' && report.kind === 'video') peer.framesDecoded = report.framesDecoded || 0;
        if (report.type === 'outbound-rtp' && report.kind === 'video') peer.framesEncoded = report.framesEncoded || 0;
        if (report.type === 'outbound-rtp' && report.kind === 'audio') peer.audioPacketsSent = report.packetsSent || 0;
        if (report.type === 'outbound-rtp' && stats.has(report.codecId)) {
            const codec = stats.get(report.codecId).mimeType;
            if (!peer.codecs.includes(codec)) peer.codecs.push(codec);
        }
    });
}

function openSignaling(channelARN, wssEndpoint) {
    const client = new SignalingClient({
        channelARN,
        channelEndpoint: wssEndpoint,
        clientId: options.role === 'VIEWER' ? options.clientId : undefined,
        role: options.role === 'MASTER' ? Role.MASTER : Role.VIEWER,
        region: options.region,
        credentials: signalingCredentials,
        // ingestion: the storage session's candidates wait until its offer is handled
        enableEarlyIceCandidateBuffering: peer.ingestion,
    });
    client.on('open', () => { peer.signaling = 'open'; });
    client.on('close', () => { peer.signaling = 'closed'; });
    client.on('error', error => fail('signaling', error));
    return client;
}

// The master answers every viewer's offer with its camera.
async function runMaster(signaling, iceServers) {
    const camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    signaling.on('sdpOffer', async (offer, viewerId) => {
        try {
            const pc = newPeerConnection(iceServers, c => signaling.sendIceCandidate(c, viewerId));
            camera.getTracks().forEach(track => pc.addTrack(track, camera));
            const remoteSet = pc.setRemoteDescription(offer);
            // the SDK emits the viewer's early candidates right after the offer: add them once it is set
            signaling.on('iceCandidate', (candidate, from) => from === viewerId &&
                remoteSet.then(() => pc.addIceCandidate(candidate)).catch(e => fail('master', e)));
            await remoteSet;
            await pc.setLocalDescription(await pc.createAnswer());
            signaling.sendSdpAnswer(pc.localDescription, viewerId);
        } catch (error) { fail('master', error); }
    });
}

// Ingestion: the storage session offers (no senderClientId) after each JoinStorageSession;
// the master answers its newest offer with camera and microphone, answer and candidates
// sent with no recipient. JoinStorageSession is retried about every 6 s until an offer
// arrives, at most 5 times, as the example does.
const JOIN_EVERY_MS = 6000, JOIN_TRIES = 5;

async function runIngestingMaster(signaling, iceServers, channelARN, webrtcEndpoint) {
    const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
    const storage = new KinesisVideoWebRTCStorageClient({
        region: options.region, endpoint: webrtcEndpoint, credentials, maxAttempts: 1 });
    let pc = null;
    signaling.on('sdpOffer', async (offer, senderClientId) => {
        if (senderClientId) return;  // only the storage session offers in ingestion mode
        peer.storageOffers += 1;
        try {
            if (pc) pc.close();  // a newer offer replaces the session
            pc = newPeerConnection(iceServers, c => signaling.sendIceCandidate(c));
            media.getTracks().forEach(track => pc.addTrack(track, media));
            await pc.setRemoteDescription(offer);
            signaling.drainPendingIceCandidates();
            await pc.setLocalDescription(await pc.createAnswer());
            signaling.sendSdpAnswer(pc.localDescription);
        } catch (error) { fail('master', error); }
    });
    signaling.on('iceCandidate', (candidate, from) => !from && pc &&
        pc.addIceCandidate(candidate).catch(e => fail('master', e)));
    signaling.on('open', async () => {
        while (peer.storageOffers === 0 && peer.joins < JOIN_TRIES) {
            peer.joins += 1;
            try {
                await storage.send(new JoinStorageSessionCommand({ channelArn: channelARN }));
            } catch (error) { fail('joinStorageSession', error); return; }
            const jitter = Math.random() * 500;
            await new Promise(resolve => setTimeout(resolve, JOIN_EVERY_MS + jitter));
        }
    });
}

// The viewer offers to receive video once signaling is open.
async function runViewer(signaling, iceServers) {
    const pc = newPeerConnection(iceServers, c => signaling.sendIceCandidate(c));
    pc.addTransceiver('video', { direction: 'recvonly' });
    signaling.on('sdpAnswer', answer => pc.setRemoteDescription(answer).catch(e => fail('viewer', e)));
    signaling.on('iceCandidate', candidate => pc.addIceCandidate(candidate).catch(e => fail('viewer', e)));
    signaling.on('open', async () => {
        try {
            await pc.setLocalDescription(await pc.createOffer());
            signaling.sendSdpOffer(pc.localDescription);
        } catch (error) { fail('viewer', error); }
    });
}

async function main() {
    const { channelARN, https, wss, webrtc } = await channelEndpoints();
    // wssEndpoint, when given, replaces the WSS endpoint kvslite returned: the cluster test's
    // way to open the WebSocket on a node of its choosing
    peer.wssEndpoint = options.wssEndpoint || wss;
    const iceServers = await turnServers(channelARN, https);
    const signaling = openSignaling(channelARN, peer.wssEndpoint);
    if (peer.ingestion) await runIngestingMaster(signaling, iceServers, channelARN, webrtc);
    else await (options.role === 'MASTER' ? runMaster : runViewer)(signaling, iceServers);
    signaling.open();
}

main().catch(error => fail('setup', error));
