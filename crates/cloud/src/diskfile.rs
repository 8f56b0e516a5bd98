//! Files the cloud writes once and keeps — recording segments, pictures,
//! firmware — written with `O_DIRECT` in aligned blocks: the bytes go from
//! the upload's buffer to the disk without passing through the page cache.
//! Buffered, every stored byte was copied into a fresh page-cache page and
//! then written back by the fsync that follows each file, which on this
//! project's VM cost 1.5 CPU-seconds per GB (`dd conv=fsync`) against 0.2
//! with `oflag=direct` (docs/BENCHMARKS.md, cloud recording).
//!
//! A file system that refuses `O_DIRECT` (at open or at the first write:
//! some need another alignment, tmpfs before Linux 6.6) gets the same
//! bytes written the ordinary way; the file's content and durability are
//! the same either way: the caller's `finish` fsyncs.

use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Offsets, lengths and buffer addresses of direct writes are multiples of
/// this (the largest logical block size of common disks).
const ALIGN: usize = 4096;
/// Bytes gathered before a write: each write is a trip to a blocking thread.
pub(crate) const BLOCK: usize = 256 << 10;

pub(crate) struct DiskFile {
    path: PathBuf,
    /// `None` only while a blocking thread is writing it.
    file: Option<std::fs::File>,
    direct: bool,
    /// `BLOCK + ALIGN` bytes; the aligned window is `buf[off..off + BLOCK]`.
    buf: Vec<u8>,
    off: usize,
    /// Bytes waiting in the window.
    held: usize,
    /// Bytes already in the file.
    written: u64,
}

fn open(path: &Path, direct: bool) -> io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true);
    if direct {
        o.truncate(true).custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

fn gone() -> io::Error {
    io::Error::other("an earlier write to this file failed")
}

impl DiskFile {
    /// Creates (or empties) `path`.
    pub(crate) async fn create(path: &Path) -> io::Result<DiskFile> {
        let p = path.to_owned();
        let (file, direct) = tokio::task::spawn_blocking(move || match open(&p, true) {
            Ok(f) => Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&p)?;
                Ok((f, false))
            }
            Err(e) => Err(e),
        })
        .await
        .map_err(io::Error::other)??;
        let buf = vec![0u8; BLOCK + ALIGN];
        let off = buf.as_ptr().align_offset(ALIGN);
        Ok(DiskFile { path: path.to_owned(), file: Some(file), direct, buf, off, held: 0, written: 0 })
    }

    /// Whether the file is being written around the page cache.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.direct
    }

    pub(crate) async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let k = (BLOCK - self.held).min(data.len());
            let at = self.off + self.held;
            self.buf[at..at + k].copy_from_slice(&data[..k]);
            self.held += k;
            data = &data[k..];
            if self.held == BLOCK {
                self.put(BLOCK).await?;
            }
        }
        Ok(())
    }

    /// Writes the first `n` bytes of the window (a multiple of `ALIGN`, or
    /// anything once the file is no longer direct) at the file's end.
    async fn put(&mut self, n: usize) -> io::Result<()> {
        let file = self.file.take().ok_or_else(gone)?;
        let buf = std::mem::take(&mut self.buf);
        let (path, off, at, direct) = (self.path.clone(), self.off, self.written, self.direct);
        let (file, buf, direct, r) = tokio::task::spawn_blocking(move || {
            let data = &buf[off..off + n];
            match file.write_all_at(data, at) {
                Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    // This file system wants another alignment: carry on
                    // through the page cache.
                    tracing::debug!(path = %path.display(), "cloud: O_DIRECT refused at write; writing buffered");
                    match open(&path, false) {
                        Ok(f) => {
                            let r = f.write_all_at(data, at);
                            (f, buf, false, r)
                        }
                        Err(e) => (file, buf, direct, Err(e)),
                    }
                }
                r => (file, buf, direct, r),
            }
        })
        .await
        .map_err(io::Error::other)?;
        self.file = Some(file);
        self.buf = buf;
        self.direct = direct;
        r?;
        self.written += n as u64;
        self.held = 0;
        Ok(())
    }

    /// Writes what is held and makes the file durable (data and size): the
    /// last block of a direct file goes out padded to the alignment, and the
    /// file is then cut to its exact length. The file's length.
    pub(crate) async fn finish(mut self) -> io::Result<u64> {
        let len = self.written + self.held as u64;
        if self.held > 0 {
            let n = if self.direct { self.held.next_multiple_of(ALIGN) } else { self.held };
            let at = self.off + self.held;
            self.buf[at..self.off + n].fill(0);
            self.put(n).await?;
        }
        let file = self.file.take().ok_or_else(gone)?;
        tokio::task::spawn_blocking(move || {
            if file.metadata()?.len() != len {
                file.set_len(len)?;
            }
            file.sync_all()
        })
        .await
        .map_err(io::Error::other)??;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the block and alignment edges comes back byte
    /// for byte, written in uneven pieces, with the exact size.
    #[tokio::test]
    async fn writes_exactly_the_bytes_given() {
        let dir = std::env::temp_dir().join(format!("ivr-diskfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut direct_seen = false;
        for len in [1usize, 4095, 4096, 4097, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let path = dir.join(format!("f{len}"));
            let mut f = DiskFile::create(&path).await.unwrap();
            direct_seen |= f.is_direct();
            for piece in data.chunks(10_007) {
                f.write(piece).await.unwrap();
            }
            assert_eq!(f.finish().await.unwrap(), len as u64);
            assert_eq!(std::fs::read(&path).unwrap(), data, "{len} bytes");
        }
        // An existing longer file is replaced, not overwritten in part.
        let path = dir.join("f1");
        std::fs::write(&path, vec![9u8; 100_000]).unwrap();
        let mut f = DiskFile::create(&path).await.unwrap();
        f.write(b"short").await.unwrap();
        assert_eq!(f.finish().await.unwrap(), 5);
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
        let _ = std::fs::remove_dir_all(&dir);
        // The machine the tests run on writes directly (ext4, or tmpfs on
        // Linux 6.6 and later): the fast path is the one tested.
        assert!(direct_seen, "O_DIRECT was refused on {}", dir.display());
    }
}
