"""H.264 Annex-B access units: NAL units, the SPS fields a container needs, and the
avcC record (AVCDecoderConfigurationRecord, ISO/IEC 14496-15) built from SPS and PPS."""

from __future__ import annotations

import re
from dataclasses import dataclass

IDR, SEI, SPS, PPS, AUD = 5, 6, 7, 8, 9
_START_CODE = re.compile(b"\x00\x00\x01")
HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte string (3- or 4-byte start codes), as sent: a
    zero byte before a start code belongs to the start code, not to the NAL unit."""
    starts = [m.end() for m in _START_CODE.finditer(data)]
    nals = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        nal = data[start:end]
        if i + 1 < len(starts):
            nal = nal.rstrip(b"\x00")  # trailing_zero_8bits / a 4-byte start code's zero
        if nal:
            nals.append(nal)
    return nals


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def to_avcc(nals: list[bytes]) -> bytes:
    """NAL units behind 4-byte big-endian lengths, as Matroska stores H.264."""
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


@dataclass(frozen=True)
class SpsInfo:
    profile_idc: int
    constraint_flags: int
    level_idc: int
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    width: int
    height: int


class _Bits:
    """An RBSP bit reader (emulation prevention bytes removed first)."""

    def __init__(self, nal: bytes):
        self.data = re.sub(b"\x00\x00\x03", b"\x00\x00", nal[1:])
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError on a truncated SPS
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code in the SPS")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def parse_sps(nal: bytes) -> SpsInfo:
    """The SPS fields up to the picture size and cropping (H.264 7.3.2.1.1); ValueError
    if the NAL unit is not a whole SPS."""
    if not nal or nal_type(nal) != SPS:
        raise ValueError("not an SPS NAL unit")
    try:
        return _parse_sps(_Bits(nal))
    except IndexError:
        raise ValueError("truncated SPS") from None


def _parse_sps(b: _Bits) -> SpsInfo:
    profile, constraints, level = b.u(8), b.u(8), b.u(8)
    b.ue()  # seq_parameter_set_id
    chroma, depth_luma, depth_chroma, separate_planes = 1, 8, 8, 0
    if profile in HIGH_PROFILES:
        chroma = b.ue()
        if chroma == 3:
            separate_planes = b.u(1)
        depth_luma, depth_chroma = b.ue() + 8, b.ue() + 8
        b.u(1)  # qpprime_y_zero_transform_bypass_flag
        if b.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if b.u(1):
                    _skip_scaling_list(b, 16 if i < 6 else 64)
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1), b.se(), b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue(), b.u(1)  # max_num_ref_frames, gaps_in_frame_num_value_allowed_flag
    width_mbs, height_units = b.ue() + 1, b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)  # mb_adaptive_frame_field_flag
    b.u(1)  # direct_8x8_inference_flag
    crop = (b.ue(), b.ue(), b.ue(), b.ue()) if b.u(1) else (0, 0, 0, 0)
    array_type = 0 if separate_planes else chroma
    crop_x = 1 if array_type == 0 else (2 if chroma in (1, 2) else 1)
    crop_y = (2 - frame_mbs_only) * (1 if array_type == 0 else (2 if chroma == 1 else 1))
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - crop_y * (crop[2] + crop[3])
    return SpsInfo(profile, constraints, level, chroma, depth_luma, depth_chroma, width, height)


def _skip_scaling_list(b: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + b.se() + 256) % 256
        last = next_scale or last


def avc_decoder_config(sps_list: list[bytes], pps_list: list[bytes]) -> bytes:
    """The avcC record (Matroska's CodecPrivate for V_MPEG4/ISO/AVC) with 4-byte NAL
    lengths; high profiles get the chroma and bit depth fields ISO/IEC 14496-15 adds."""
    info = parse_sps(sps_list[0])
    out = bytes([1, info.profile_idc, info.constraint_flags, info.level_idc, 0xFC | 3,
                 0xE0 | len(sps_list)])
    out += b"".join(len(s).to_bytes(2, "big") + s for s in sps_list)
    out += bytes([len(pps_list)]) + b"".join(len(p).to_bytes(2, "big") + p for p in pps_list)
    if info.profile_idc in HIGH_PROFILES:
        out += bytes([0xFC | info.chroma_format_idc, 0xF8 | (info.bit_depth_luma - 8),
                      0xF8 | (info.bit_depth_chroma - 8), 0])
    return out
