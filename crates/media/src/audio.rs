//! Audio framing. AAC travels inside ivr as ADTS frames (the 7-byte header
//! carries the configuration, as Annex B carries the parameter sets for
//! video); containers that want the AudioSpecificConfig (FLV, MP4) build it
//! from the header. G.711 is one byte a sample at 8 kHz.

/// ISO/IEC 14496-3 sampling frequency table.
pub const AAC_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// An ADTS header, read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adts {
    /// Audio object type (2 = AAC LC).
    pub object_type: u8,
    pub rate_index: u8,
    pub channels: u8,
    /// Header length (7, or 9 with a CRC).
    pub header: usize,
    /// Whole frame length, header included.
    pub len: usize,
}

impl Adts {
    pub fn rate(&self) -> u32 {
        AAC_RATES.get(self.rate_index as usize).copied().unwrap_or(0)
    }
    /// The 2-byte AudioSpecificConfig (FLV sequence header, `esds`).
    pub fn asc(&self) -> [u8; 2] {
        [self.object_type << 3 | self.rate_index >> 1, (self.rate_index & 1) << 7 | self.channels << 3]
    }
}

/// Reads the ADTS header at the start of `b`.
pub fn parse_adts(b: &[u8]) -> Option<Adts> {
    if b.len() < 7 || b[0] != 0xff || b[1] & 0xf6 != 0xf0 {
        return None;
    }
    let header = if b[1] & 1 == 1 { 7 } else { 9 };
    let len = ((b[3] as usize & 3) << 11) | (b[4] as usize) << 3 | (b[5] as usize) >> 5;
    if len < header {
        return None;
    }
    let rate_index = (b[2] >> 2) & 0x0f;
    if rate_index as usize >= AAC_RATES.len() {
        return None;
    }
    Some(Adts { object_type: (b[2] >> 6) + 1, rate_index, channels: (b[2] & 1) << 2 | b[3] >> 6, header, len })
}

/// The ADTS frames of a buffer (a PES payload may hold several); stops at
/// the first bytes that are not a whole frame.
pub fn adts_frames(mut b: &[u8]) -> Vec<(Adts, &[u8])> {
    let mut out = Vec::new();
    while let Some(h) = parse_adts(b) {
        if b.len() < h.len {
            break;
        }
        out.push((h, &b[..h.len]));
        b = &b[h.len..];
    }
    out
}

/// An ADTS header for a raw AAC frame of `payload` bytes with the
/// configuration in `asc` (AudioSpecificConfig, from FLV or `esds`).
pub fn adts_header(asc: &[u8], payload: usize) -> Option<[u8; 7]> {
    if asc.len() < 2 {
        return None;
    }
    let object_type = asc[0] >> 3;
    let rate_index = (asc[0] & 7) << 1 | asc[1] >> 7;
    let channels = (asc[1] >> 3) & 0x0f;
    if object_type == 0 || object_type > 4 || rate_index as usize >= AAC_RATES.len() {
        return None;
    }
    let len = payload + 7;
    if len >= 1 << 13 {
        return None;
    }
    Some([
        0xff,
        0xf1,
        (object_type - 1) << 6 | rate_index << 2 | channels >> 2,
        (channels & 3) << 6 | (len >> 11) as u8,
        (len >> 3) as u8,
        ((len & 7) as u8) << 5 | 0x1f,
        0xfc,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adts_round_trip() {
        // AAC LC, 44.1 kHz, stereo.
        let asc = [0x12, 0x10];
        let h = adts_header(&asc, 100).unwrap();
        let mut f = h.to_vec();
        f.extend_from_slice(&[0u8; 100]);
        let a = parse_adts(&f).unwrap();
        assert_eq!((a.object_type, a.rate(), a.channels, a.header, a.len), (2, 44100, 2, 7, 107));
        assert_eq!(a.asc(), asc);
        f.extend_from_slice(&f.clone());
        assert_eq!(adts_frames(&f).len(), 2);
        assert_eq!(adts_frames(&f[..150]).len(), 1, "a torn second frame is not a frame");
        assert!(parse_adts(&[0xff, 0xf1, 0x3c, 0, 0, 0, 0]).is_none(), "rate index 15");
        assert!(adts_header(&[0], 1).is_none());
    }
}
