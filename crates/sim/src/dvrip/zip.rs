//! A stored (uncompressed) zip archive: what the device exports with 1542
//! and takes back with 1540. Written and read by hand: tiny, and no
//! compression is needed for a few KiB of JSON.

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// An archive of `(name, contents)` entries.
pub(crate) fn write(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let fixed = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&0u16.to_le_bytes()); // stored
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra
        };
        out.extend_from_slice(&LOCAL.to_le_bytes());
        fixed(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&CENTRAL.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // made by
        fixed(&mut central);
        central.extend_from_slice(&[0; 8]); // comment len, disk, int attr
        central.extend_from_slice(&0u32.to_le_bytes()); // ext attr
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&END.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The entries of a stored archive, checked against their CRCs.
pub(crate) fn read(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let u16_at = |p: usize| data.get(p..p + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |p: usize| data.get(p..p + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    while u32_at(pos) == Some(LOCAL) {
        let method = u16_at(pos + 8).ok_or("truncated header")?;
        if method != 0 {
            return Err(format!(
                "entry at byte {pos} is compressed (method {method}); only stored entries are accepted"
            ));
        }
        let crc = u32_at(pos + 14).ok_or("truncated header")?;
        let size = u32_at(pos + 18).ok_or("truncated header")? as usize;
        let name_len = u16_at(pos + 26).ok_or("truncated header")?;
        let extra = u16_at(pos + 28).ok_or("truncated header")?;
        let name_start = pos + 30;
        let data_start = name_start + name_len + extra;
        let name = data.get(name_start..name_start + name_len).ok_or("truncated name")?;
        let body =
            data.get(data_start..data_start + size).ok_or_else(|| format!("entry at byte {pos} is truncated"))?;
        if crc32(body) != crc {
            return Err(format!("entry {:?} fails its CRC", String::from_utf8_lossy(name)));
        }
        out.push((String::from_utf8_lossy(name).into_owned(), body.to_vec()));
        pos = data_start + size;
    }
    if out.is_empty() {
        return Err("not a zip archive (no local file header at byte 0)".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_crc_check() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let a = write(&[("General.json".into(), b"{}".to_vec()), ("NetWork.json".into(), b"[1]".to_vec())]);
        let e = read(&a).unwrap();
        assert_eq!(e[1], ("NetWork.json".to_string(), b"[1]".to_vec()));
        let mut broken = a.clone();
        broken[31 + 12] ^= 0xFF;
        assert!(read(&broken).is_err());
        assert!(read(b"nope").is_err());
    }
}
