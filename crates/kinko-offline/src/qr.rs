//! A bundle as a sequence of QR codes (K14, optional transport across the air gap): each frame's text is
//! `kinko:<i>/<n>:<base64 chunk>` (i from 1), one SVG file per frame. Reassembly takes the scanned frame texts
//! in any order, with repeats, and refuses a missing, conflicting or malformed frame. The frames carry no
//! integrity of their own beyond the QR codes' error correction: the result is a bundle or signed file whose
//! every field the receiving side checks anyway.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

use crate::bundle::{BUNDLE_LEN_MAX, BundleError, invalid};

pub const FRAME_PREFIX: &str = "kinko:";
/// Raw bytes per frame: 600 bytes are 800 base64 characters, a QR code of version ~22 at error correction M,
/// which phone and desk scanners read from a screen.
pub const FRAME_CHUNK_BYTES: usize = 600;
/// Bound on frames in one sequence (covers [`BUNDLE_LEN_MAX`]).
pub const FRAMES_MAX: usize = (BUNDLE_LEN_MAX as usize).div_ceil(FRAME_CHUNK_BYTES);
/// Bound on one frame's text.
const FRAME_TEXT_LEN_MAX: usize = 64 + FRAME_CHUNK_BYTES * 4 / 3 + 4;

/// The frame texts of `bytes`.
pub fn frames(bytes: &[u8]) -> Result<Vec<String>, BundleError> {
    if bytes.is_empty() || bytes.len() as u64 > BUNDLE_LEN_MAX {
        return Err(invalid("file", format!("must be 1 to {BUNDLE_LEN_MAX} bytes")));
    }
    let n = bytes.len().div_ceil(FRAME_CHUNK_BYTES);
    Ok(bytes
        .chunks(FRAME_CHUNK_BYTES)
        .enumerate()
        .map(|(i, chunk)| format!("{FRAME_PREFIX}{}/{n}:{}", i + 1, STANDARD.encode(chunk)))
        .collect())
}

fn parse_frame(text: &str) -> Result<(usize, usize, Vec<u8>), BundleError> {
    let bad = |reason: &str| invalid("frame", format!("{reason}: {:?}", text.chars().take(24).collect::<String>()));
    if text.len() > FRAME_TEXT_LEN_MAX {
        return Err(bad("is too long"));
    }
    let rest = text.strip_prefix(FRAME_PREFIX).ok_or_else(|| bad("does not start with kinko:"))?;
    let (pos, data) = rest.split_once(':').ok_or_else(|| bad("has no i/n position"))?;
    let (i, n) = pos.split_once('/').ok_or_else(|| bad("has no i/n position"))?;
    let i: usize = i.parse().map_err(|_| bad("position is not a number"))?;
    let n: usize = n.parse().map_err(|_| bad("count is not a number"))?;
    if n == 0 || n > FRAMES_MAX || i == 0 || i > n {
        return Err(bad("position is out of range"));
    }
    let bytes = STANDARD.decode(data).map_err(|_| bad("is not base64"))?;
    if bytes.is_empty() || bytes.len() > FRAME_CHUNK_BYTES {
        return Err(bad("chunk has the wrong size"));
    }
    Ok((i, n, bytes))
}

/// Reassembles scanned frame texts (any order, repeats allowed; blank lines ignored).
pub fn reassemble<S: AsRef<str>>(texts: &[S]) -> Result<Vec<u8>, BundleError> {
    let mut slots: Vec<Option<Vec<u8>>> = Vec::new();
    let mut count = None;
    for text in texts.iter().map(|t| t.as_ref().trim()).filter(|t| !t.is_empty()) {
        let (i, n, bytes) = parse_frame(text)?;
        match count {
            None => {
                count = Some(n);
                slots = vec![None; n];
            }
            Some(c) if c != n => return Err(invalid("frame", format!("frame {i} says {n} frames, others {c}"))),
            Some(_) => {}
        }
        match &slots[i - 1] {
            Some(seen) if *seen != bytes => {
                return Err(invalid("frame", format!("frame {i}/{n} scanned twice, differently")));
            }
            _ => slots[i - 1] = Some(bytes),
        }
    }
    if count.is_none() {
        return Err(invalid("frame", "no frames"));
    }
    let missing: Vec<String> =
        slots.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| (i + 1).to_string()).collect();
    if !missing.is_empty() {
        return Err(invalid("frame", format!("missing frames {}", missing.join(", "))));
    }
    Ok(slots.into_iter().flatten().flatten().collect())
}

/// One frame as an SVG QR code (error correction M).
pub fn frame_svg(text: &str) -> Result<String, BundleError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| invalid("frame", format!("does not fit a QR code: {e}")))?;
    Ok(code.render::<svg::Color<'_>>().min_dimensions(400, 400).quiet_zone(true).build())
}

/// Writes `file` as frames `DIR/frame-<i>-of-<n>.svg` (0600) and `DIR/frames.txt` (the frame texts, one a
/// line, for a scanner-less check). Returns the SVG paths.
pub fn write_frames(file: &Path, dir: &Path) -> Result<Vec<PathBuf>, BundleError> {
    let bytes = crate::bundle::read_bounded(file)?;
    let texts = frames(&bytes)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| BundleError::Io { path: dir.display().to_string(), reason: e.to_string() })?;
    let n = texts.len();
    let mut paths = Vec::with_capacity(n);
    for (i, text) in texts.iter().enumerate() {
        let path = dir.join(format!("frame-{:03}-of-{n:03}.svg", i + 1));
        write_text_0600(&path, &frame_svg(text)?)?;
        paths.push(path);
    }
    write_text_0600(&dir.join("frames.txt"), &(texts.join("\n") + "\n"))?;
    Ok(paths)
}

fn write_text_0600(path: &Path, text: &str) -> Result<(), BundleError> {
    use std::io::Write;
    let io = |e: std::io::Error| BundleError::Io { path: path.display().to_string(), reason: e.to_string() };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k14_frames_reassemble_in_any_order_and_refuse_gaps_and_conflicts() {
        let data: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let mut f = frames(&data).unwrap();
        assert_eq!(f.len(), 4);
        assert!(f[0].starts_with("kinko:1/4:"));
        f.reverse();
        f.push(f[1].clone());
        assert_eq!(reassemble(&f).unwrap(), data);
        let gap: Vec<&String> = f.iter().filter(|t| !t.starts_with("kinko:2/")).collect();
        assert!(reassemble(&gap).unwrap_err().to_string().contains("missing frames 2"));
        let mut conflict = f.clone();
        conflict.push(frames(&[1u8; 2000]).unwrap()[2].clone());
        assert!(reassemble(&conflict).is_err());
        assert!(reassemble(&["kinko:0/1:AA=="]).is_err());
        assert!(reassemble(&["hello"]).is_err());
        assert!(reassemble::<&str>(&[]).is_err());
    }
}
