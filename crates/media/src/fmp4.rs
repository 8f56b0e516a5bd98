//! Fragmented MP4 (ISO/IEC 14496-12 and -15) for Media Source Extensions
//! and files: an init segment (`ftyp` + `moov` with an `avc1`/`hvc1`
//! sample entry carrying `avcC`/`hvcC`) and fragments (`moof` + `mdat`),
//! one video track at 90 kHz. Samples are length-prefixed (4 bytes);
//! parameter sets travel in the sample entry, AUDs and in-band parameter
//! sets are left out of the samples.

use crate::annexb::{nal_type, nal_units};
use crate::audio::{parse_adts, Adts};
use crate::params::{parameter_sets, Sps};
use crate::{Codec, Frame};

pub const TIMESCALE: u32 = 90_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Mp4Error {
    #[error("no {0} parameter set for the init segment")]
    Missing(&'static str),
    #[error("{0:?} is not a codec this writer carries (H.264, H.265)")]
    Codec(Codec),
    #[error("parameter set of {0} bytes does not fit")]
    TooLong(usize),
}

fn bx(out: &mut Vec<u8>, typ: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(typ);
    body(out);
    let size = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

fn full(out: &mut Vec<u8>, typ: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut Vec<u8>)) {
    bx(out, typ, |o| {
        o.push(version);
        o.extend_from_slice(&flags.to_be_bytes()[1..]);
        body(o);
    });
}

fn u16b(o: &mut Vec<u8>, v: u16) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn u32b(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_be_bytes());
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn by_type(codec: Codec, params: &[Vec<u8>], t: u8) -> Vec<&Vec<u8>> {
    params.iter().filter(|p| nal_type(codec, p) == Some(t)).collect()
}

/// The AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3), as `avcC`
/// and FLV's AVC sequence header carry it.
pub fn avc_config(sps: &Sps, params: &[Vec<u8>]) -> Result<Vec<u8>, Mp4Error> {
    let s = by_type(Codec::H264, params, 7);
    let p = by_type(Codec::H264, params, 8);
    if s.is_empty() {
        return Err(Mp4Error::Missing("SPS"));
    }
    if p.is_empty() {
        return Err(Mp4Error::Missing("PPS"));
    }
    let mut body = Vec::new();
    body.extend_from_slice(&[
        1,
        sps.profile_idc,
        sps.constraint_flags,
        sps.level_idc,
        0xff,
        0xe0 | s.len().min(31) as u8,
    ]);
    for n in s.iter().take(31) {
        u16b(&mut body, u16::try_from(n.len()).map_err(|_| Mp4Error::TooLong(n.len()))?);
        body.extend_from_slice(n);
    }
    body.push(p.len().min(255) as u8);
    for n in p.iter().take(255) {
        u16b(&mut body, u16::try_from(n.len()).map_err(|_| Mp4Error::TooLong(n.len()))?);
        body.extend_from_slice(n);
    }
    if [100, 110, 122, 144].contains(&sps.profile_idc) {
        body.extend_from_slice(&[
            0xfc | sps.chroma_format_idc as u8,
            0xf8 | (sps.bit_depth_luma - 8),
            0xf8 | (sps.bit_depth_chroma - 8),
            0,
        ]);
    }
    Ok(body)
}

/// The HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3), as `hvcC`
/// and Enhanced RTMP's sequence start carry it.
pub fn hevc_config(sps: &Sps, params: &[Vec<u8>]) -> Result<Vec<u8>, Mp4Error> {
    let ptl = sps.ptl.ok_or(Mp4Error::Missing("H.265 profile_tier_level"))?;
    let arrays: Vec<(u8, Vec<&Vec<u8>>)> = [(32u8, "VPS"), (33, "SPS"), (34, "PPS")]
        .iter()
        .map(|(t, name)| {
            let v = by_type(Codec::H265, params, *t);
            if v.is_empty() {
                Err(Mp4Error::Missing(name))
            } else {
                Ok((*t, v))
            }
        })
        .collect::<Result<_, _>>()?;
    let mut body = vec![1];
    body.extend_from_slice(&ptl[..11]); // space/tier/idc, compatibility, constraints
    body.push(ptl[11]); // level
    u16b(&mut body, 0xf000); // min_spatial_segmentation_idc 0
    body.push(0xfc); // parallelismType 0
    body.push(0xfc | sps.chroma_format_idc as u8);
    body.push(0xf8 | (sps.bit_depth_luma - 8));
    body.push(0xf8 | (sps.bit_depth_chroma - 8));
    u16b(&mut body, 0); // avgFrameRate
    body.push(0x0f); // constantFrameRate 0, numTemporalLayers 1, temporalIdNested 1, lengthSizeMinusOne 3
    body.push(arrays.len() as u8);
    for (t, nals) in arrays {
        body.push(0x80 | t); // array_completeness
        u16b(&mut body, nals.len() as u16);
        for n in nals {
            u16b(&mut body, u16::try_from(n.len()).map_err(|_| Mp4Error::TooLong(n.len()))?);
            body.extend_from_slice(n);
        }
    }
    Ok(body)
}

/// `ftyp` + `moov` for one video track described by `sps` and `params`
/// (the stream's parameter-set NAL units, see [`parameter_sets`]).
pub fn init_segment(sps: &Sps, params: &[Vec<u8>]) -> Result<Vec<u8>, Mp4Error> {
    init_segment_av(sps, params, None)
}

/// `mdhd` and `hdlr` of a track.
fn media_header(o: &mut Vec<u8>, timescale: u32, handler: &[u8; 4], name: &[u8]) {
    full(o, b"mdhd", 0, 0, |o| {
        u32b(o, 0);
        u32b(o, 0);
        u32b(o, timescale);
        u32b(o, 0);
        u16b(o, 0x55c4); // "und"
        u16b(o, 0);
    });
    full(o, b"hdlr", 0, 0, |o| {
        u32b(o, 0);
        o.extend_from_slice(handler);
        o.extend_from_slice(&[0; 12]);
        o.extend_from_slice(name);
    });
}

/// `dinf` (data in this file), then `stbl` with `stsd` written by `entry`
/// and the empty sample tables of a fragmented file.
fn dinf_stbl(o: &mut Vec<u8>, entry: impl FnOnce(&mut Vec<u8>)) {
    bx(o, b"dinf", |o| {
        full(o, b"dref", 0, 0, |o| {
            u32b(o, 1);
            full(o, b"url ", 0, 1, |_| {});
        })
    });
    bx(o, b"stbl", |o| {
        full(o, b"stsd", 0, 0, |o| {
            u32b(o, 1);
            entry(o);
        });
        full(o, b"stts", 0, 0, |o| u32b(o, 0));
        full(o, b"stsc", 0, 0, |o| u32b(o, 0));
        full(o, b"stsz", 0, 0, |o| {
            u32b(o, 0);
            u32b(o, 0);
        });
        full(o, b"stco", 0, 0, |o| u32b(o, 0));
    });
}

/// The MPEG-4 ES descriptor length: 4 bytes, 7 bits each.
fn desc(o: &mut Vec<u8>, tag: u8, body: &[u8]) {
    let n = body.len() as u32;
    o.push(tag);
    o.extend_from_slice(&[
        0x80 | (n >> 21) as u8 & 0x7f,
        0x80 | (n >> 14) as u8 & 0x7f,
        0x80 | (n >> 7) as u8 & 0x7f,
        n as u8 & 0x7f,
    ]);
    o.extend_from_slice(body);
}

/// The audio track (id 2) of an AAC stream described by its ADTS header:
/// `mp4a` with an `esds` carrying the AudioSpecificConfig.
fn audio_trak(o: &mut Vec<u8>, a: &Adts) {
    let rate = a.rate();
    bx(o, b"trak", |o| {
        full(o, b"tkhd", 0, 3, |o| {
            u32b(o, 0);
            u32b(o, 0);
            u32b(o, 2);
            u32b(o, 0);
            u32b(o, 0);
            o.extend_from_slice(&[0; 8]);
            u16b(o, 0);
            u16b(o, 1); // alternate group
            u16b(o, 0x0100); // volume
            u16b(o, 0);
            MATRIX.iter().for_each(|m| u32b(o, *m));
            u32b(o, 0);
            u32b(o, 0);
        });
        bx(o, b"mdia", |o| {
            media_header(o, rate, b"soun", b"ivr audio\0");
            bx(o, b"minf", |o| {
                full(o, b"smhd", 0, 0, |o| u32b(o, 0));
                dinf_stbl(o, |o| {
                    bx(o, b"mp4a", |o| {
                        o.extend_from_slice(&[0; 6]);
                        u16b(o, 1);
                        o.extend_from_slice(&[0; 8]);
                        u16b(o, a.channels.max(1) as u16);
                        u16b(o, 16);
                        u32b(o, 0);
                        u32b(o, rate.min(0xffff) << 16);
                        full(o, b"esds", 0, 0, |o| {
                            let mut dsi = Vec::new();
                            desc(&mut dsi, 5, &a.asc());
                            let mut dcd = vec![0x40, 0x15, 0, 0, 0];
                            dcd.extend_from_slice(&[0; 8]); // max and average bitrate unknown
                            dcd.extend_from_slice(&dsi);
                            let mut es = vec![0, 2, 0]; // ES_ID 2, no flags
                            desc(&mut es, 4, &dcd);
                            desc(&mut es, 6, &[2]); // SLConfig: MP4
                            desc(o, 3, &es);
                        });
                    });
                });
            });
        });
    });
}

/// `ftyp` + `moov` for the video track and, with `audio`, an AAC track.
pub fn init_segment_av(sps: &Sps, params: &[Vec<u8>], audio: Option<&Adts>) -> Result<Vec<u8>, Mp4Error> {
    let entry = match sps.codec {
        Codec::H264 => b"avc1",
        Codec::H265 => b"hvc1",
        c => return Err(Mp4Error::Codec(c)),
    };
    let (name, record) = match sps.codec {
        Codec::H264 => (b"avcC", avc_config(sps, params)?),
        _ => (b"hvcC", hevc_config(sps, params)?),
    };
    let mut config = Vec::new();
    bx(&mut config, name, |o| o.extend_from_slice(&record));
    let (w, h) = (sps.width, sps.height);
    let mut o = Vec::with_capacity(1024);
    bx(&mut o, b"ftyp", |o| {
        o.extend_from_slice(b"iso5");
        u32b(o, 512);
        for b in [b"iso5", b"iso6", b"mp41", entry] {
            o.extend_from_slice(b);
        }
    });
    bx(&mut o, b"moov", |o| {
        full(o, b"mvhd", 0, 0, |o| {
            u32b(o, 0);
            u32b(o, 0);
            u32b(o, 1000);
            u32b(o, 0);
            u32b(o, 0x0001_0000);
            u16b(o, 0x0100);
            o.extend_from_slice(&[0; 10]);
            MATRIX.iter().for_each(|m| u32b(o, *m));
            o.extend_from_slice(&[0; 24]);
            u32b(o, if audio.is_some() { 3 } else { 2 });
        });
        bx(o, b"trak", |o| {
            full(o, b"tkhd", 0, 3, |o| {
                u32b(o, 0);
                u32b(o, 0);
                u32b(o, 1);
                u32b(o, 0);
                u32b(o, 0);
                o.extend_from_slice(&[0; 8]);
                u16b(o, 0);
                u16b(o, 0);
                u16b(o, 0);
                u16b(o, 0);
                MATRIX.iter().for_each(|m| u32b(o, *m));
                u32b(o, w << 16);
                u32b(o, h << 16);
            });
            bx(o, b"mdia", |o| {
                media_header(o, TIMESCALE, b"vide", b"ivr video\0");
                bx(o, b"minf", |o| {
                    full(o, b"vmhd", 0, 1, |o| o.extend_from_slice(&[0; 8]));
                    dinf_stbl(o, |o| {
                        bx(o, entry, |o| {
                            o.extend_from_slice(&[0; 6]);
                            u16b(o, 1); // data_reference_index
                            o.extend_from_slice(&[0; 16]);
                            u16b(o, w as u16);
                            u16b(o, h as u16);
                            u32b(o, 0x0048_0000);
                            u32b(o, 0x0048_0000);
                            u32b(o, 0);
                            u16b(o, 1); // frame_count
                            o.extend_from_slice(&[0; 32]); // compressorname
                            u16b(o, 0x0018);
                            u16b(o, 0xffff);
                            o.extend_from_slice(&config);
                        });
                    });
                });
            });
        });
        if let Some(a) = audio {
            audio_trak(o, a);
        }
        bx(o, b"mvex", |o| {
            for id in 1..=if audio.is_some() { 2 } else { 1 } {
                full(o, b"trex", 0, 0, |o| {
                    u32b(o, id);
                    u32b(o, 1);
                    u32b(o, 0);
                    u32b(o, 0);
                    u32b(o, 0);
                })
            }
        });
    });
    Ok(o)
}

/// The sample of a frame: its NAL units length-prefixed, without AUDs and
/// parameter sets.
pub fn sample(codec: Codec, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len());
    for n in sample_nals(codec, frame) {
        u32b(&mut out, n.len() as u32);
        out.extend_from_slice(n);
    }
    out
}

/// The NAL units of a frame that go in its sample: all but AUDs and
/// parameter sets (those are in the init segment).
fn sample_nals(codec: Codec, frame: &[u8]) -> Vec<&[u8]> {
    let skip: &[u8] = if codec == Codec::H265 { &[32, 33, 34, 35] } else { &[7, 8, 9] };
    let mut nals = nal_units(frame);
    nals.retain(|n| !nal_type(codec, n).is_some_and(|t| skip.contains(&t)));
    nals
}

/// Writes fragments; one per call, with the next sequence number.
#[derive(Clone, Debug)]
pub struct Fragmenter {
    codec: Codec,
    seq: u32,
    /// Duration given to the last sample of a fragment (90 kHz).
    pub default_duration: u32,
    /// Whether the init segment has the audio track (track 2).
    pub audio: bool,
}

impl Fragmenter {
    pub fn new(codec: Codec, fps: u32) -> Fragmenter {
        Fragmenter { codec, seq: 0, default_duration: TIMESCALE / fps.max(1), audio: false }
    }

    /// `moof` + `mdat` for `frames` (decoding order). Each sample lasts
    /// until the next frame's DTS; the last one until `next_dts` when
    /// known, else `default_duration`.
    pub fn fragment(&mut self, frames: &[Frame], next_dts: Option<u64>) -> Vec<u8> {
        self.fragment_av(frames, next_dts, &[])
    }

    /// A fragment with the video `frames` (track 1) and the AAC frames
    /// (ADTS, track 2, 1024 samples each at the rate of their header) that
    /// go with them; the audio's decode time comes from its first frame.
    pub fn fragment_av(&mut self, frames: &[Frame], next_dts: Option<u64>, audio: &[Frame]) -> Vec<u8> {
        let mut o = Vec::new();
        self.fragment_av_into(frames, next_dts, audio, &mut o);
        o
    }

    /// As [`Fragmenter::fragment_av`], appended to `o`. Each video byte is
    /// copied once, from the frame into `o`'s `mdat`: the samples' sizes
    /// come from their NAL units before anything is written.
    pub fn fragment_av_into(&mut self, frames: &[Frame], next_dts: Option<u64>, audio: &[Frame], o: &mut Vec<u8>) {
        self.seq += 1;
        let nals: Vec<Vec<&[u8]>> = frames.iter().map(|f| sample_nals(self.codec, &f.data)).collect();
        let sizes: Vec<usize> = nals.iter().map(|v| v.iter().map(|n| 4 + n.len()).sum()).collect();
        let durations: Vec<u32> = (0..frames.len())
            .map(|i| {
                let next = frames.get(i + 1).map(|f| f.dts).or(next_dts);
                next.map(|n| n.saturating_sub(frames[i].dts) as u32).unwrap_or(self.default_duration)
            })
            .collect();
        let aac: Vec<(&[u8], u32)> = audio
            .iter()
            .filter_map(|f| {
                let h = parse_adts(&f.data)?;
                Some((f.data.get(h.header..h.len)?, h.rate()))
            })
            .collect();
        let base = frames.first().map(|f| f.dts).unwrap_or(0);
        let video_bytes: usize = sizes.iter().sum();
        let audio_bytes: usize = aac.iter().map(|(raw, _)| raw.len()).sum();
        o.reserve(video_bytes + audio_bytes + 160 + 16 * frames.len() + 8 * aac.len());
        let start = o.len();
        let (mut offset_at, mut audio_offset_at) = (0, None);
        bx(o, b"moof", |o| {
            full(o, b"mfhd", 0, 0, |o| u32b(o, self.seq));
            bx(o, b"traf", |o| {
                full(o, b"tfhd", 0, 0x02_0000, |o| u32b(o, 1)); // default-base-is-moof
                full(o, b"tfdt", 1, 0, |o| o.extend_from_slice(&base.to_be_bytes()));
                // Composition offsets only when some frame is shown later
                // than decoded (B-frames; cameras send none).
                let cto = frames.iter().any(|f| f.pts != f.dts);
                full(o, b"trun", u8::from(cto), if cto { 0x000f01 } else { 0x000701 }, |o| {
                    u32b(o, frames.len() as u32);
                    offset_at = o.len();
                    u32b(o, 0); // data offset, patched below
                    for (i, f) in frames.iter().enumerate() {
                        u32b(o, durations[i]);
                        u32b(o, sizes[i] as u32);
                        u32b(o, if f.keyframe { 0x0200_0000 } else { 0x0101_0000 });
                        if cto {
                            u32b(o, (f.pts as i64 - f.dts as i64) as i32 as u32);
                        }
                    }
                });
            });
            if let (true, Some(first), Some(&(_, rate))) = (self.audio, audio.first(), aac.first()) {
                bx(o, b"traf", |o| {
                    full(o, b"tfhd", 0, 0x02_0000, |o| u32b(o, 2));
                    let t = first.dts as u128 * rate as u128 / TIMESCALE as u128;
                    full(o, b"tfdt", 1, 0, |o| o.extend_from_slice(&(t as u64).to_be_bytes()));
                    full(o, b"trun", 0, 0x000301, |o| {
                        u32b(o, aac.len() as u32);
                        audio_offset_at = Some(o.len());
                        u32b(o, 0);
                        for (raw, _) in &aac {
                            u32b(o, 1024);
                            u32b(o, raw.len() as u32);
                        }
                    });
                });
            }
        });
        // Offsets are from the moof's first byte (default-base-is-moof).
        let data_offset = (o.len() - start + 8) as u32;
        o[offset_at..offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
        if let Some(at) = audio_offset_at {
            o[at..at + 4].copy_from_slice(&(data_offset + video_bytes as u32).to_be_bytes());
        }
        bx(o, b"mdat", |o| {
            for frame in &nals {
                for n in frame {
                    u32b(o, n.len() as u32);
                    o.extend_from_slice(n);
                }
            }
            for (raw, _) in &aac {
                o.extend_from_slice(raw);
            }
        });
    }
}

/// The parameter sets and SPS of the first keyframe of `frames`.
pub fn describe(codec: Codec, frames: &[Frame]) -> Result<(Sps, Vec<Vec<u8>>), Mp4Error> {
    let key = frames.iter().find(|f| f.keyframe).ok_or(Mp4Error::Missing("keyframe"))?;
    let params = parameter_sets(codec, &key.data);
    let sps = crate::params::find_sps(codec, &key.data).map_err(|_| Mp4Error::Missing("SPS"))?;
    Ok((sps, params))
}
