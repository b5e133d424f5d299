"""What a coded picture is to the pictures after it: a reference, or disposable.

A picture no later picture predicts from (H.264: nal_ref_idc 0; H.265: a sub-layer
non-reference NAL unit type, TRAIL_N, TSA_N, ...) can be left out of a decode without
changing any other picture, so GetImages never decodes one it does not show. H.265
sub-layer non-reference pictures may still be referenced from higher temporal layers,
so their TemporalId is kept too: see `skippable`.

Payloads are as Matroska stores them: NAL units behind a big-endian length whose size
the avcC/hvcC codec private gives.
"""

from __future__ import annotations

from dataclasses import dataclass

AVC = "V_MPEG4/ISO/AVC"
HEVC = "V_MPEGH/ISO/HEVC"


@dataclass(frozen=True)
class PictureRole:
    disposable: bool = False  # no later picture (of its temporal layer and below) uses it
    temporal_id: int = 0      # H.265 sub-layer; 0 for H.264


REFERENCE = PictureRole()  # what an unknown or unparsable picture is taken for


def length_size(codec_id: str, codec_private: bytes | None) -> int | None:
    """The NAL length field size from avcC/hvcC, or None if the codec is not H.264/H.265
    or the record is not there."""
    if not codec_private or codec_private[0] != 1:
        return None
    if codec_id == AVC and len(codec_private) >= 5:
        return (codec_private[4] & 3) + 1
    if codec_id == HEVC and len(codec_private) >= 22:
        return (codec_private[21] & 3) + 1
    return None


def picture_role(codec_id: str, size: int | None, payload: bytes | memoryview) -> PictureRole:
    """The role of the picture in `payload`: disposable only if every slice in it is (a
    frame may hold two fields, and only one of them be a reference)."""
    if size is None:
        return REFERENCE
    disposable, temporal_id, slices = True, 0, 0
    at = 0
    while at + size < len(payload):
        length = int.from_bytes(payload[at:at + size], "big")
        header = bytes(payload[at + size:at + size + 2])
        at += size + length
        if not header or length == 0:
            break
        if codec_id == AVC:
            if 1 <= header[0] & 0x1F <= 5:  # a slice
                slices += 1
                disposable &= (header[0] >> 5) & 3 == 0
        elif len(header) == 2 and (header[0] >> 1) & 0x3F <= 31:  # a VCL NAL unit
            nal_type = (header[0] >> 1) & 0x3F
            slices += 1
            # the even types up to RSV_VCL_N14 are sub-layer non-reference pictures
            disposable &= nal_type <= 14 and nal_type % 2 == 0
            temporal_id = (header[1] & 7) - 1
    return PictureRole(disposable, temporal_id) if slices and disposable else \
        PictureRole(False, temporal_id) if slices else REFERENCE


def skippable(role: PictureRole, highest_wanted_temporal_id: int) -> bool:
    """Whether a picture nobody asked for can be left out of a decode whose wanted
    pictures are on temporal layers up to `highest_wanted_temporal_id`: a sub-layer
    non-reference picture may be used by higher layers only, and every picture the
    wanted ones depend on is on their layers or below."""
    return role.disposable and role.temporal_id >= highest_wanted_temporal_id
