//! Annex B byte streams: NAL units between start codes, NAL types, and the
//! split of a raw `.h264`/`.h265` stream into access units.

use crate::Codec;
use bytes::Bytes;

/// (start-code offset, NAL offset) of every NAL unit: `00 00 01` or
/// `00 00 00 01`. Scans for the `01` bytes with memchr (SIMD) and looks
/// back, so payload bytes cost almost nothing.
pub fn nal_starts(data: &[u8]) -> Vec<(usize, usize)> {
    NalStarts::new(data).collect()
}

/// [`nal_starts`] one at a time: a caller that stops early (at the first
/// picture NAL unit, say) leaves the rest of the frame unread.
pub struct NalStarts<'a> {
    data: &'a [u8],
    ones: memchr::Memchr<'a>,
    last_end: usize,
}

impl<'a> NalStarts<'a> {
    pub fn new(data: &'a [u8]) -> NalStarts<'a> {
        NalStarts { data, ones: memchr::memchr_iter(1, data), last_end: 0 }
    }
}

impl Iterator for NalStarts<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let data = self.data;
        for i in self.ones.by_ref() {
            if i < 2 || i < self.last_end + 2 || data[i - 1] != 0 || data[i - 2] != 0 {
                continue;
            }
            let sc = if i >= 3 && i - 3 >= self.last_end && data[i - 3] == 0 { i - 3 } else { i - 2 };
            self.last_end = i + 1;
            return Some((sc, i + 1));
        }
        None
    }
}

/// The NAL units in front of an access unit's first picture (slice) NAL
/// unit: AUD, parameter sets, SEI. Stops where the picture starts, so the
/// picture's bytes — nearly all of a frame — are never scanned.
pub fn leading_nals(codec: Codec, data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = NalStarts::new(data);
    let mut cur = starts.next();
    std::iter::from_fn(move || loop {
        let (_, nal) = cur?;
        if nal_type(codec, &data[nal..]).is_some_and(|t| vcl(codec, t).0) {
            cur = None;
            return None;
        }
        let next = starts.next();
        let end = next.map_or(data.len(), |x| x.0);
        cur = next;
        if end > nal {
            return Some(&data[nal..end]);
        }
    })
}

/// The NAL units of `data`, start codes removed.
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let starts = nal_starts(data);
    let mut out = Vec::with_capacity(starts.len());
    for (k, (_, s)) in starts.iter().enumerate() {
        let e = starts.get(k + 1).map(|x| x.0).unwrap_or(data.len());
        if e > *s {
            out.push(&data[*s..e]);
        }
    }
    out
}

/// The NAL type of a unit's first byte(s).
pub fn nal_type(codec: Codec, nal: &[u8]) -> Option<u8> {
    let b = *nal.first()?;
    Some(match codec {
        Codec::H265 => (b >> 1) & 0x3f,
        _ => b & 0x1f,
    })
}

/// A slice NAL (picture data) and whether it is an intra (IDR/IRAP) one.
fn vcl(codec: Codec, t: u8) -> (bool, bool) {
    match codec {
        Codec::H265 => (t < 32, (16..=23).contains(&t)),
        _ => ((1..=5).contains(&t), t == 5),
    }
}

/// Whether an access unit holds an intra picture (IDR, or an IRAP picture
/// for H.265): a point where decoding can start.
pub fn is_keyframe(codec: Codec, au: &[u8]) -> bool {
    nal_units(au).iter().any(|n| nal_type(codec, n).is_some_and(|t| vcl(codec, t).1))
}

/// Whether this NAL starts a new access unit when it follows picture data
/// (parameter sets, SEI, AUD come before the picture they belong to).
fn starts_unit(codec: Codec, nal: &[u8]) -> bool {
    let Some(t) = nal_type(codec, nal) else { return false };
    match codec {
        Codec::H265 => {
            // VPS/SPS/PPS/AUD/prefix SEI and the reserved types that may
            // open an access unit, or a slice with first_slice_segment_in_pic_flag.
            matches!(t, 32..=35 | 39 | 41..=44 | 48..=55) || t < 32 && nal.get(2).is_some_and(|b| b & 0x80 != 0)
        }
        // SEI/SPS/PPS/AUD and 14–18, or a slice whose first_mb_in_slice is 0.
        _ => matches!(t, 6..=9 | 14..=18) || (1..=5).contains(&t) && nal.get(1).is_some_and(|b| b & 0x80 != 0),
    }
}

/// One access unit of a raw stream.
#[derive(Clone, Debug)]
pub struct Unit {
    pub keyframe: bool,
    /// Annex B, start codes kept.
    pub data: Bytes,
}

/// Splits a raw Annex B stream into access units (pictures with the
/// parameter sets and SEI before them). Bytes before the first start code
/// are dropped; every other byte ends up in exactly one unit.
pub fn access_units(data: &Bytes, codec: Codec) -> Vec<Unit> {
    let starts = nal_starts(data);
    let mut units = Vec::new();
    let mut cur: Option<usize> = None;
    let mut has_vcl = false;
    let mut key = false;
    for (k, &(sc, nal)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map(|x| x.0).unwrap_or(data.len());
        let body = &data[nal..end];
        let t = nal_type(codec, body).unwrap_or(0);
        let (is_vcl, is_key) = vcl(codec, t);
        if has_vcl && starts_unit(codec, body) {
            if let Some(s) = cur {
                units.push(Unit { keyframe: key, data: data.slice(s..sc) });
            }
            cur = None;
            has_vcl = false;
            key = false;
        }
        cur.get_or_insert(sc);
        has_vcl |= is_vcl;
        key |= is_key;
    }
    if let Some(s) = cur {
        units.push(Unit { keyframe: key, data: data.slice(s..) });
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_into_pictures() {
        // SPS PPS IDR(first slice) | slice(first) | slice(first) slice(not first)
        let s = Bytes::from_static(&[
            0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 1, 0x65, 0x88, 3, //
            0, 0, 1, 0x41, 0x9a, 4, //
            0, 0, 1, 0x41, 0x9a, 5, 0, 0, 1, 0x41, 0x1a, 6,
        ]);
        let u = access_units(&s, Codec::H264);
        assert_eq!(u.len(), 3);
        assert!(u[0].keyframe && !u[1].keyframe && !u[2].keyframe);
        assert_eq!(u.iter().map(|x| x.data.len()).sum::<usize>(), s.len());
        assert_eq!(nal_units(&u[2].data).len(), 2);
    }

    #[test]
    fn leading_nals_stop_at_the_picture() {
        // AUD SPS PPS SEI | IDR slice | filler: only the first four.
        let f = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 1, 0x06, 5, 1, 0x80, //
            0, 0, 1, 0x65, 0x88, 7, 0, 0, 1, 0x0c, 0xff, 0x80,
        ];
        let lead: Vec<&[u8]> = leading_nals(Codec::H264, &f).collect();
        assert_eq!(lead, [&[0x09, 0xf0][..], &[0x67, 1, 2], &[0x68, 3], &[0x06, 5, 1, 0x80]]);
        assert_eq!(leading_nals(Codec::H264, &f[25..]).count(), 0, "a bare picture has nothing in front");
        // H.265: VPS SPS PPS then a CRA slice (type 21).
        let h = [0, 0, 1, 0x40, 1, 9, 0, 0, 1, 0x42, 1, 9, 0, 0, 1, 0x44, 1, 9, 0, 0, 1, 0x2a, 1, 0xaf, 9];
        assert_eq!(leading_nals(Codec::H265, &h).count(), 3);
        assert_eq!(leading_nals(Codec::H264, &[]).count(), 0);
    }

    /// The scan this replaced, as the reference.
    fn nal_starts_slow(data: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 3 <= data.len() {
            if data[i] == 0 && data[i + 1] == 0 {
                if data[i + 2] == 1 {
                    out.push((i, i + 3));
                    i += 3;
                    continue;
                }
                if i + 4 <= data.len() && data[i + 2] == 0 && data[i + 3] == 1 {
                    out.push((i, i + 4));
                    i += 4;
                    continue;
                }
            }
            i += 1;
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn fast_scan_matches_the_byte_by_byte_one(b in proptest::collection::vec(0u8..3, 0..300)) {
            proptest::prop_assert_eq!(nal_starts(&b), nal_starts_slow(&b));
        }

        #[test]
        fn arbitrary_bytes_keep_every_byte(b in proptest::collection::vec(0u8..4, 0..300)) {
            let b = Bytes::from(b);
            for codec in [Codec::H264, Codec::H265] {
                let u = access_units(&b, codec);
                let first = nal_starts(&b).first().map(|x| x.0).unwrap_or(b.len());
                proptest::prop_assert_eq!(u.iter().map(|x| x.data.len()).sum::<usize>(), b.len() - first);
            }
        }
    }
}
