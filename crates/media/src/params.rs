//! Parameter sets: find SPS/PPS/VPS in a stream and read from the SPS what
//! containers need — width, height, profile, level, chroma format, bit
//! depths — and the RFC 6381 codec string (`avc1.4d401e`,
//! `hvc1.1.6.L150.90`). Every read is bounds-checked: a truncated or
//! garbled SPS is an error, never a panic.

use crate::annexb::{nal_type, nal_units};
use crate::Codec;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("SPS ends early (needed bit {0})")]
    Short(usize),
    #[error("SPS value out of range: {0}")]
    Range(&'static str),
    #[error("no SPS in the stream")]
    NoSps,
}

/// What the SPS says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sps {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub profile_idc: u8,
    pub level_idc: u8,
    pub chroma_format_idc: u32,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    /// H.264: constraint_set flags byte. H.265: unused.
    pub constraint_flags: u8,
    /// H.265 profile_tier_level, general part (12 bytes: space/tier/idc,
    /// 4 compatibility bytes, 6 constraint bytes, level).
    pub ptl: Option<[u8; 12]>,
}

/// The RBSP of a NAL unit: emulation-prevention bytes (00 00 03) removed.
pub fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, ParamError> {
        let byte = *self.b.get(self.pos / 8).ok_or(ParamError::Short(self.pos))?;
        let v = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(v as u32)
    }

    fn bits(&mut self, n: u32) -> Result<u32, ParamError> {
        let mut v = 0u32;
        for _ in 0..n {
            v = v << 1 | self.bit()?;
        }
        Ok(v)
    }

    fn skip(&mut self, n: usize) -> Result<(), ParamError> {
        self.pos += n;
        if self.pos > self.b.len() * 8 {
            return Err(ParamError::Short(self.pos));
        }
        Ok(())
    }

    /// Exp-Golomb, unsigned.
    fn ue(&mut self) -> Result<u32, ParamError> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(ParamError::Range("exp-Golomb code longer than 32 bits"));
            }
        }
        Ok(((1u64 << zeros) - 1 + self.bits(zeros)? as u64) as u32)
    }

    fn se(&mut self) -> Result<i32, ParamError> {
        let k = self.ue()? as i64;
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) } as i32)
    }
}

fn scaling_list(r: &mut Bits, size: usize) -> Result<(), ParamError> {
    let (mut last, mut next) = (8i32, 8i32);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            if !(-128..=127).contains(&delta) {
                return Err(ParamError::Range("delta_scale"));
            }
            next = (last + delta + 256) % 256;
        }
        last = if next == 0 { last } else { next };
    }
    Ok(())
}

/// Parses an H.264 SPS NAL unit (with its 1-byte header).
/// The cropping / conformance window flag and its four offsets (left,
/// right, top, bottom), zero when absent: the same in both SPS syntaxes.
fn crop(r: &mut Bits<'_>) -> Result<[u64; 4], ParamError> {
    if r.bit()? == 0 {
        return Ok([0; 4]);
    }
    Ok([r.ue()? as u64, r.ue()? as u64, r.ue()? as u64, r.ue()? as u64])
}

pub fn parse_h264_sps(nal: &[u8]) -> Result<Sps, ParamError> {
    let b = rbsp(nal);
    let mut r = Bits { b: &b, pos: 8 };
    let profile_idc = r.bits(8)? as u8;
    let constraint_flags = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    r.ue()?; // seq_parameter_set_id
    let (mut chroma, mut separate, mut bdl, mut bdc) = (1u32, false, 8u8, 8u8);
    if [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135].contains(&profile_idc) {
        chroma = r.ue()?;
        if chroma > 3 {
            return Err(ParamError::Range("chroma_format_idc"));
        }
        if chroma == 3 {
            separate = r.bit()? == 1;
        }
        bdl = 8 + (r.ue()?.min(8)) as u8;
        bdc = 8 + (r.ue()?.min(8)) as u8;
        r.bit()?; // qpprime_y_zero_transform_bypass
        if r.bit()? == 1 {
            for i in 0..if chroma != 3 { 8 } else { 12 } {
                if r.bit()? == 1 {
                    scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return Err(ParamError::Range("num_ref_frames_in_pic_order_cnt_cycle"));
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        2 => {}
        _ => return Err(ParamError::Range("pic_order_cnt_type")),
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps
    let w_mbs = r.ue()? as u64 + 1;
    let h_units = r.ue()? as u64 + 1;
    let frame_mbs_only = r.bit()? as u64;
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?; // direct_8x8_inference
    let [cl, cr, ct, cb] = crop(&mut r)?;
    let (cx, cy) = match (chroma, separate) {
        (0, _) | (3, true) => (1, 2 - frame_mbs_only),
        (1, _) => (2, 2 * (2 - frame_mbs_only)),
        (2, _) => (2, 2 - frame_mbs_only),
        _ => (1, 2 - frame_mbs_only),
    };
    let width = (w_mbs * 16).checked_sub(cx * (cl + cr)).ok_or(ParamError::Range("horizontal cropping"))?;
    let height = ((2 - frame_mbs_only) * h_units * 16)
        .checked_sub(cy * (ct + cb))
        .ok_or(ParamError::Range("vertical cropping"))?;
    if width == 0 || height == 0 || width > 16384 || height > 16384 {
        return Err(ParamError::Range("picture size"));
    }
    Ok(Sps {
        codec: Codec::H264,
        width: width as u32,
        height: height as u32,
        profile_idc,
        level_idc,
        chroma_format_idc: chroma,
        bit_depth_luma: bdl,
        bit_depth_chroma: bdc,
        constraint_flags,
        ptl: None,
    })
}

/// Parses an H.265 SPS NAL unit (with its 2-byte header).
pub fn parse_h265_sps(nal: &[u8]) -> Result<Sps, ParamError> {
    let b = rbsp(nal);
    let mut r = Bits { b: &b, pos: 16 };
    r.bits(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.bits(3)?;
    r.bit()?; // temporal_id_nesting
    let ptl_start = r.pos / 8;
    let mut ptl = [0u8; 12];
    ptl.copy_from_slice(b.get(ptl_start..ptl_start + 12).ok_or(ParamError::Short(r.pos + 96))?);
    r.skip(96)?;
    let mut sub_profile = [false; 8];
    let mut sub_level = [false; 8];
    for i in 0..max_sub_layers_minus1 as usize {
        sub_profile[i] = r.bit()? == 1;
        sub_level[i] = r.bit()? == 1;
    }
    if max_sub_layers_minus1 > 0 {
        r.skip(2 * (8 - max_sub_layers_minus1 as usize))?;
    }
    for i in 0..max_sub_layers_minus1 as usize {
        if sub_profile[i] {
            r.skip(88)?;
        }
        if sub_level[i] {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma = r.ue()?;
    if chroma > 3 {
        return Err(ParamError::Range("chroma_format_idc"));
    }
    let mut separate = false;
    if chroma == 3 {
        separate = r.bit()? == 1;
    }
    let w = r.ue()? as u64;
    let h = r.ue()? as u64;
    let [cl, cr, ct, cb] = crop(&mut r)?;
    let (sx, sy) = match (chroma, separate) {
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let width = w.checked_sub(sx * (cl + cr)).ok_or(ParamError::Range("conformance window"))?;
    let height = h.checked_sub(sy * (ct + cb)).ok_or(ParamError::Range("conformance window"))?;
    if width == 0 || height == 0 || width > 16384 || height > 16384 {
        return Err(ParamError::Range("picture size"));
    }
    let bdl = 8 + r.ue()?.min(8) as u8;
    let bdc = 8 + r.ue()?.min(8) as u8;
    Ok(Sps {
        codec: Codec::H265,
        width: width as u32,
        height: height as u32,
        profile_idc: ptl[0] & 0x1f,
        level_idc: ptl[11],
        chroma_format_idc: chroma,
        bit_depth_luma: bdl,
        bit_depth_chroma: bdc,
        constraint_flags: 0,
        ptl: Some(ptl),
    })
}

impl Sps {
    /// The RFC 6381 `codecs` parameter (ISO/IEC 14496-15 for hvc1).
    pub fn codec_string(&self) -> String {
        match self.ptl {
            None => format!("avc1.{:02x}{:02x}{:02x}", self.profile_idc, self.constraint_flags, self.level_idc),
            Some(p) => {
                let space = ["", "A", "B", "C"][(p[0] >> 6) as usize];
                let tier = if p[0] & 0x20 != 0 { 'H' } else { 'L' };
                let compat = u32::from_be_bytes([p[1], p[2], p[3], p[4]]).reverse_bits();
                let mut s = format!("hvc1.{space}{}.{compat:X}.{tier}{}", p[0] & 0x1f, p[11]);
                let cons = &p[5..11];
                let n = cons.iter().rposition(|b| *b != 0).map(|i| i + 1).unwrap_or(0);
                for b in &cons[..n] {
                    s.push_str(&format!(".{b:X}"));
                }
                s
            }
        }
    }
}

/// The parameter-set NAL units of an access unit (H.265: VPS, SPS, PPS;
/// H.264: SPS, PPS), start codes removed.
pub fn parameter_sets(codec: Codec, au: &[u8]) -> Vec<Vec<u8>> {
    let wanted: &[u8] = if codec == Codec::H265 { &[32, 33, 34] } else { &[7, 8] };
    nal_units(au)
        .into_iter()
        .filter(|n| nal_type(codec, n).is_some_and(|t| wanted.contains(&t)))
        .map(|n| n.to_vec())
        .collect()
}

/// The first SPS of `data`, parsed.
pub fn find_sps(codec: Codec, data: &[u8]) -> Result<Sps, ParamError> {
    let sps_type = if codec == Codec::H265 { 33 } else { 7 };
    let nal = nal_units(data).into_iter().find(|n| nal_type(codec, n) == Some(sps_type)).ok_or(ParamError::NoSps)?;
    if codec == Codec::H265 {
        parse_h265_sps(nal)
    } else {
        parse_h264_sps(nal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_prevention_is_removed() {
        assert_eq!(rbsp(&[0x67, 0, 0, 3, 1, 0, 0, 3, 0, 0, 3]), vec![0x67, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn fuzz_crash_scaling_list_delta() {
        // Found by the `params` fuzz target: a scaling-list delta near
        // i32::MAX overflowed the running value.
        let b = [
            0xce, 0x53, 0x00, 0x0d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x94, 0x94, 0x94, 0x32, 0x94, 0xff, 0x1f, 0x00,
            0x00, 0x00, 0x94, 0x2e, 0x94, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff, 0x5d,
        ];
        assert!(parse_h264_sps(&b).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_h264_sps(&[0x67]).is_err());
        assert!(parse_h264_sps(&[0x67, 100, 0, 31, 0, 0, 0]).is_err());
        assert!(parse_h265_sps(&[0x42, 0x01, 0x01]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {

            let _ = parse_h264_sps(&b);
            let _ = parse_h265_sps(&b);
        }
    }
}
