"""Annex-B H.264/H.265 -> what Matroska carries: 4-byte length-prefixed NAL units, and the
avcC/hvcC decoder configuration record built from the stream's parameter sets."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import SourceError
from .video import normalize_codec


def is_annexb(data: bytes) -> bool:
    """True if `data` starts with an Annex-B start code (00 00 01 or 00 00 00 01)."""
    return data[:3] == b"\0\0\1" or data[:4] == b"\0\0\0\1"


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte stream, start codes and trailing zeros removed."""
    data = bytes(data)
    nals, start = [], data.find(b"\0\0\1")
    if start < 0:
        raise SourceError("no Annex-B start code found in an H.264/H.265 packet")
    start += 3
    while True:
        nxt = data.find(b"\0\0\1", start)
        nal = data[start:] if nxt < 0 else data[start:nxt]
        nal = nal.rstrip(b"\0")  # a zero before the next start code belongs to it
        if nal:
            nals.append(nal)
        if nxt < 0:
            return nals
        start = nxt + 3


def length_prefixed(nals: Iterable[bytes]) -> bytes:
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


def split_length_prefixed(data: bytes, size: int = 4) -> list[bytes]:
    nals, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + size], "big")
        if pos + size + n > len(data):
            raise SourceError("a length-prefixed NAL unit overruns its packet")
        nals.append(bytes(data[pos + size:pos + size + n]))
        pos += size + n
    return nals


def is_length_prefixed(data: bytes) -> bool:
    """True if `data` parses as 4-byte length-prefixed NAL units."""
    try:
        split_length_prefixed(data)
        return True
    except SourceError:
        return False


def h264_nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def hevc_nal_type(nal: bytes) -> int:
    return (nal[0] >> 1) & 0x3F


# ----------------------------------------------------------------------------- parameter sets

def _rbsp(nal: bytes, header_len: int) -> bytes:
    """The NAL payload with emulation-prevention bytes (00 00 03) removed."""
    out, zeros = bytearray(), 0
    for b in nal[header_len:]:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class _Bits:
    """A big-endian bit reader with Exp-Golomb codes, for parameter set fields."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise SourceError("truncated parameter set")
            v = (v << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise SourceError("malformed Exp-Golomb code in a parameter set")
        return (1 << zeros) - 1 + self.u(zeros)


def avcc_from_parameter_sets(sps: list[bytes], pps: list[bytes]) -> bytes:
    """An AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1), 4-byte NAL lengths."""
    if not sps or not pps:
        raise SourceError("H.264 stream without SPS/PPS: cannot build the avcC codec private data")
    first = sps[0]
    if len(first) < 4:
        raise SourceError("truncated H.264 SPS")
    profile = first[1]
    out = bytearray([1, profile, first[2], first[3], 0xFC | 3, 0xE0 | len(sps)])
    for s in sps:
        out += len(s).to_bytes(2, "big") + s
    out.append(len(pps))
    for p in pps:
        out += len(p).to_bytes(2, "big") + p
    if profile in (100, 110, 122, 144):  # High profiles carry chroma format and bit depths
        bits = _Bits(_rbsp(first, 1)[3:])
        bits.ue()  # seq_parameter_set_id
        chroma = bits.ue()
        if chroma == 3:
            bits.u(1)  # separate_colour_plane_flag
        depth_luma, depth_chroma = bits.ue(), bits.ue()
        out += bytes([0xFC | (chroma & 3), 0xF8 | (depth_luma & 7), 0xF8 | (depth_chroma & 7), 0])
    return bytes(out)


def _hevc_sps_info(sps: bytes) -> dict:
    """The fields of an H.265 SPS that the hvcC record repeats."""
    rbsp = _rbsp(sps, 2)
    bits = _Bits(rbsp)
    bits.u(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = bits.u(3)
    info = {"temporal_id_nested": bits.u(1), "sub_layers": max_sub_layers_minus1 + 1,
            "ptl": rbsp[1:13]}  # general profile_tier_level: 12 bytes, byte aligned
    bits.u(96)  # (raises if the SPS is too short to hold them)
    present = [(bits.u(1), bits.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1:
        bits.u(2 * (8 - max_sub_layers_minus1))
    for profile_present, level_present in present:
        bits.u(88 if profile_present else 0)
        bits.u(8 if level_present else 0)
    bits.ue()  # sps_seq_parameter_set_id
    info["chroma"] = bits.ue()
    if info["chroma"] == 3:
        bits.u(1)
    bits.ue(), bits.ue()  # pic width, height
    if bits.u(1):  # conformance window
        for _ in range(4):
            bits.ue()
    info["depth_luma"], info["depth_chroma"] = bits.ue(), bits.ue()
    return info


def hvcc_from_parameter_sets(vps: list[bytes], sps: list[bytes], pps: list[bytes]) -> bytes:
    """An HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1), 4-byte NAL lengths."""
    if not vps or not sps or not pps:
        raise SourceError("H.265 stream without VPS/SPS/PPS: cannot build the hvcC codec "
                          "private data")
    info = _hevc_sps_info(sps[0])
    out = bytearray([1]) + info["ptl"]  # version; profile space/tier/idc, flags, level
    out += bytes([0xF0, 0x00, 0xFC, 0xFC | (info["chroma"] & 3), 0xF8 | (info["depth_luma"] & 7),
                  0xF8 | (info["depth_chroma"] & 7), 0, 0])  # ...; avgFrameRate 0
    out.append(((info["sub_layers"] & 7) << 3) | (info["temporal_id_nested"] << 2) | 3)
    arrays = [(32, vps), (33, sps), (34, pps)]
    out.append(len(arrays))
    for nal_type, nals in arrays:
        out.append(nal_type)  # array_completeness 0: the stream may repeat them in-band
        out += len(nals).to_bytes(2, "big")
        for n in nals:
            out += len(n).to_bytes(2, "big") + n
    return bytes(out)


# ----------------------------------------------------------------------------- the converter

class AnnexBConverter:
    """Annex-B packets -> 4-byte length-prefixed packets, collecting the parameter sets
    (SPS/PPS, and VPS for H.265) for the avcC/hvcC record. All NAL units are kept."""

    _TYPES = {"h264": {7: "sps", 8: "pps"}, "hevc": {32: "vps", 33: "sps", 34: "pps"}}

    def __init__(self, codec: str, extradata: bytes | None = None):
        self.codec = normalize_codec(codec)
        self.params: dict[str, list[bytes]] = {"vps": [], "sps": [], "pps": []}
        if extradata and is_annexb(extradata):
            self._collect(split_annexb(extradata))

    def _collect(self, nals: list[bytes]) -> None:
        nal_type = h264_nal_type if self.codec == "h264" else hevc_nal_type
        for nal in nals:
            kind = self._TYPES[self.codec].get(nal_type(nal))
            if kind and nal not in self.params[kind] and len(self.params[kind]) < 32:
                self.params[kind].append(nal)

    def convert(self, packet: bytes) -> bytes:
        nals = split_annexb(packet)
        self._collect(nals)
        return length_prefixed(nals)

    def codec_private(self) -> bytes:
        p = self.params
        if self.codec == "h264":
            return avcc_from_parameter_sets(p["sps"], p["pps"])
        return hvcc_from_parameter_sets(p["vps"], p["sps"], p["pps"])
