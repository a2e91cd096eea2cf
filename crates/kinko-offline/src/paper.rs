//! Paper backup of a cold seed (K17): the seed printed as Shamir shares with QR codes, and the restore.
//!
//! The BIP39 *entropy* (16 to 32 bytes), not the 64-byte seed, is split: it is the smallest thing that gives
//! the mnemonic back, so each share fits a small QR code and can be typed by hand. The split is Shamir over
//! GF(256) byte by byte (`blahaj`, the crate the master key's custodian shares use, [`kinko_keys::shares`]);
//! any `threshold` shares give the entropy back, fewer reveal nothing about it.
//!
//! A share's text form (the QR code's content, also printed under it):
//!
//! ```text
//! KINKO-PAPER-V1:<SET>:<K>-OF-<N>:<INDEX>:<PAYLOAD>:<CHECKSUM>
//! ```
//!
//! - `SET`: the first 8 hex digits of sha256 of the account xpub (the text of the xpub, see
//!   [`PAPER_ACCOUNT_PATH`]). It ties the sheets of one seed together and, after a restore, proves the
//!   combination is the seed the sheets were made from (a share of another backup of the same seed, or a
//!   share damaged in a way its checksum missed, gives another xpub).
//! - `INDEX`: the Shamir x-coordinate, 1..=N. `PAYLOAD`: the share's y-bytes, hex.
//! - `CHECKSUM`: the first 8 hex digits of sha256 of everything before the last `:`, so a misread or
//!   mistyped character is caught on that one sheet, before any combination (checkable by hand with
//!   `printf %s 'KINKO-…:<PAYLOAD>' | sha256sum`).
//!
//! Everything is upper case on purpose: it keeps the QR code in alphanumeric mode (a smaller code for the
//! same text). Parsing ignores white space and case, so the grouped form printed on the sheet can be typed
//! back as it is.

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bitcoin::bip32::{DerivationPath, Xpub};
use bitcoin::secp256k1::Secp256k1;
use qrcode::{EcLevel, QrCode};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use kinko_keys::hd;

/// The prefix of every share text; the version is part of it so a future format is refused by name.
pub const FORMAT_TAG: &str = "KINKO-PAPER-V1";
const FORMAT_TAG_FAMILY: &str = "KINKO-PAPER-";
/// The account whose xpub names the set and is compared after a restore: the cold keystore's account (the
/// cold key is its first address), so the xpub printed on the sheets is the one `keygen` printed.
pub const PAPER_ACCOUNT_PATH: &str = crate::keystore::COLD_ACCOUNT_PATH;
/// Shamir with one share is a plain copy of the seed; a paper backup that any single sheet restores is
/// not what K17 asks for.
pub const THRESHOLD_MIN: u8 = 2;
/// More sheets than this is a distribution mistake, not a policy (and it bounds the self-check below).
pub const SHARES_MAX: u8 = 16;
/// Bound on one share's text as given (typed forms carry spaces and line breaks).
pub const SHARE_TEXT_LEN_MAX: usize = 1024;
/// Bound on how many share texts one restore takes.
pub const RESTORE_INPUTS_MAX: usize = 64;
/// Bound on a file given to restore (an SVG page is a few tens of KiB).
pub const SHARE_FILE_LEN_MAX: u64 = 512 * 1024;
/// Bound on a mnemonic read from stdin: 24 words of at most 8 letters, with generous white space.
pub const MNEMONIC_INPUT_LEN_MAX: u64 = 4096;
const SET_ID_HEX_LEN: usize = 8;
const CHECKSUM_HEX_LEN: usize = 8;
/// BIP39 entropy lengths: 12, 15, 18, 21 and 24 words.
const ENTROPY_LENS: [usize; 5] = [16, 20, 24, 28, 32];
/// The page is A4 in tenths of a millimetre, so every coordinate below is an integer.
const PAGE_WIDTH: u32 = 2100;
const PAGE_HEIGHT: u32 = 2970;
/// The QR code is about 10 cm wide: easy to scan, and room for the text form below.
const QR_SIZE_TARGET: u32 = 1000;
const QR_TOP: u32 = 400;
/// The quiet zone qrcode's renderer adds on each side, in modules.
const QR_QUIET_ZONE_MODULES: u32 = 4;
/// The text form is printed in groups of 4 characters, 8 groups a line.
const GROUP_LEN: usize = 4;
const GROUPS_PER_LINE: usize = 8;
/// Class of the `<text>` elements holding the share's text form: restore reads a page by it.
pub const SHARE_TEXT_CLASS: &str = "share-text";

#[derive(Debug, thiserror::Error)]
pub enum PaperError {
    #[error("{field}: {reason}")]
    Param { field: &'static str, reason: String },
    /// Never includes the words themselves.
    #[error("mnemonic is not valid BIP39: {0}")]
    Mnemonic(&'static str),
    /// `position` counts the shares as given, from 1. Never includes the payload.
    #[error("share {position}: {reason}")]
    Share { position: usize, reason: String },
    #[error("share {position} (index {index}) is from set {got}, but share 1 is from set {expected}")]
    WrongSet { position: usize, index: u8, expected: String, got: String },
    #[error("share {position} repeats index {index}, already given as share {first}")]
    DuplicateIndex { position: usize, index: u8, first: usize },
    #[error("not enough shares of set {set_id}: {have} given, any {need} of the {total} are needed")]
    NotEnoughShares { set_id: String, have: usize, need: u8, total: u8 },
    #[error(
        "the shares of set {set_id} combine to a seed whose account xpub is not the set's: a share is from \
         another backup of this seed, or damaged in a way its checksum missed"
    )]
    SetMismatch { set_id: String },
    /// A share error with where that share came from (a file, an argument, stdin).
    #[error("{cause} (share {} is {label})", cause.position().unwrap_or(0))]
    Input { label: String, cause: Box<PaperError> },
    #[error("qr code: {0}")]
    Qr(String),
    #[error("bip32: {0}")]
    Hd(#[from] hd::HdError),
    #[error("io {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl PaperError {
    /// The position (from 1, in input order) of the share an error is about, if it is about one.
    pub fn position(&self) -> Option<usize> {
        match self {
            PaperError::Share { position, .. }
            | PaperError::WrongSet { position, .. }
            | PaperError::DuplicateIndex { position, .. } => Some(*position),
            PaperError::Input { cause, .. } => cause.position(),
            _ => None,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PaperError + '_ {
    move |source| PaperError::Io { path: path.display().to_string(), source }
}

/// One sheet's share. The payload is zeroized on drop; `Debug` shows only which share it is.
#[derive(Clone)]
pub struct PaperShare {
    pub set_id: String,
    pub threshold: u8,
    pub shares: u8,
    pub index: u8,
    payload: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PaperShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaperShare")
            .field("set_id", &self.set_id)
            .field("threshold", &self.threshold)
            .field("shares", &self.shares)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl PaperShare {
    fn body(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(64 + 2 * self.payload.len()));
        let _ = write!(&mut *s, "{FORMAT_TAG}:{}:{}-OF-{}:{}:", self.set_id, self.threshold, self.shares, self.index);
        for b in self.payload.iter() {
            let _ = write!(&mut *s, "{b:02X}");
        }
        s
    }

    /// The text form: the QR code's content and what is printed under it (in groups).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut s = self.body();
        let checksum = checksum(&s);
        s.push(':');
        s.push_str(&checksum);
        s
    }

    /// Parses a text form (white space and case ignored). `position` (from 1) names the share in errors.
    pub fn parse(text: &str, position: usize) -> Result<PaperShare, PaperError> {
        let bad = |reason: String| PaperError::Share { position, reason };
        if text.len() > SHARE_TEXT_LEN_MAX {
            return Err(bad(format!("longer than {SHARE_TEXT_LEN_MAX} characters")));
        }
        let norm: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).map(|c| c.to_ascii_uppercase()).collect());
        if norm.is_empty() {
            return Err(bad("is empty".into()));
        }
        let Some((body, given_checksum)) = norm.rsplit_once(':') else {
            return Err(bad(format!("is not a kinko paper share (expected {FORMAT_TAG}:...)")));
        };
        let fields: Vec<&str> = body.split(':').collect();
        match fields[0] {
            FORMAT_TAG => {}
            tag if tag.starts_with(FORMAT_TAG_FAMILY) => {
                return Err(bad(format!("unsupported format {tag:?}, this tool reads {FORMAT_TAG}")));
            }
            _ => return Err(bad(format!("is not a kinko paper share (expected {FORMAT_TAG}:...)"))),
        }
        if fields.len() != 5 {
            return Err(bad(format!("has {} fields, expected 6 separated by ':'", fields.len() + 1)));
        }
        // The checksum comes first: a misread character anywhere is then reported as what it is.
        if given_checksum.len() != CHECKSUM_HEX_LEN || !is_upper_hex(given_checksum) {
            return Err(bad(format!("checksum must be {CHECKSUM_HEX_LEN} hex digits")));
        }
        if checksum(body) != given_checksum {
            return Err(bad(
                "checksum does not match: a character was misread, mistyped or changed; check the sheet".into()
            ));
        }
        let set_id = fields[1];
        if set_id.len() != SET_ID_HEX_LEN || !is_upper_hex(set_id) {
            return Err(bad(format!("set id must be {SET_ID_HEX_LEN} hex digits")));
        }
        let Some((k, n)) = fields[2].split_once("-OF-") else {
            return Err(bad("threshold field must read K-OF-N".into()));
        };
        let threshold: u8 = k.parse().map_err(|_| bad("threshold K is not a number from 2 to 16".into()))?;
        let shares: u8 = n.parse().map_err(|_| bad("share count N is not a number from 2 to 16".into()))?;
        check_threshold(threshold, shares).map_err(|e| bad(e.to_string()))?;
        let index: u8 = fields[3].parse().map_err(|_| bad("index is not a number".into()))?;
        if index == 0 || index > shares {
            return Err(bad(format!("index {index} is outside 1..={shares}")));
        }
        let payload = Zeroizing::new(hex::decode(fields[4]).map_err(|_| bad("payload is not hex".into()))?);
        if !ENTROPY_LENS.contains(&payload.len()) {
            return Err(bad(format!("payload has {} bytes, expected 16, 20, 24, 28 or 32", payload.len())));
        }
        Ok(PaperShare { set_id: set_id.to_string(), threshold, shares, index, payload })
    }

    /// The text form as printed: the header, then the payload in groups of four, then the checksum.
    pub fn text_lines(&self) -> Vec<Zeroizing<String>> {
        let text = self.to_text();
        let (body, checksum) = text.rsplit_once(':').unwrap_or((&text, ""));
        let (header, payload) = body.rsplit_once(':').unwrap_or(("", body));
        let mut lines = vec![Zeroizing::new(format!("{header}:"))];
        let chars: Vec<char> = payload.chars().collect();
        for line in chars.chunks(GROUP_LEN * GROUPS_PER_LINE) {
            let mut l = Zeroizing::new(String::with_capacity(GROUP_LEN * GROUPS_PER_LINE * 2));
            for (i, group) in line.chunks(GROUP_LEN).enumerate() {
                if i > 0 {
                    l.push(' ');
                }
                l.extend(group.iter());
            }
            lines.push(l);
        }
        lines.push(Zeroizing::new(format!(":{checksum}")));
        lines
    }

    fn blahaj_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(1 + self.payload.len()));
        bytes.push(self.index);
        bytes.extend_from_slice(&self.payload);
        bytes
    }
}

/// A paper backup: the sheets' shares and the public facts printed on every sheet.
#[derive(Debug)]
pub struct PaperBackup {
    pub account_path: &'static str,
    pub account_xpub: String,
    /// BIP32 fingerprint of the account key, hex (what wallets show next to an xpub).
    pub account_fingerprint: String,
    pub set_id: String,
    pub threshold: u8,
    pub shares: Vec<PaperShare>,
}

/// What a restore gives back. The mnemonic is zeroized on drop; `Debug` shows only the public parts.
pub struct Restored {
    pub set_id: String,
    pub account_path: &'static str,
    pub account_xpub: String,
    pub account_fingerprint: String,
    pub mnemonic: Zeroizing<String>,
}

impl std::fmt::Debug for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restored")
            .field("set_id", &self.set_id)
            .field("account_path", &self.account_path)
            .field("account_xpub", &self.account_xpub)
            .finish_non_exhaustive()
    }
}

fn check_threshold(threshold: u8, shares: u8) -> Result<(), PaperError> {
    if !(2..=SHARES_MAX).contains(&shares) {
        return Err(PaperError::Param { field: "shares", reason: format!("must be 2 to {SHARES_MAX}, got {shares}") });
    }
    if threshold < THRESHOLD_MIN || threshold > shares {
        return Err(PaperError::Param {
            field: "threshold",
            reason: format!("must be {THRESHOLD_MIN} to the number of shares ({shares}), got {threshold}"),
        });
    }
    Ok(())
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fn checksum(body: &str) -> String {
    hex::encode_upper(&Sha256::digest(body.as_bytes())[..CHECKSUM_HEX_LEN / 2])
}

/// The set id of an account xpub: the first 8 hex digits of sha256 of its text.
pub fn set_id_of(account_xpub: &str) -> String {
    hex::encode_upper(&Sha256::digest(account_xpub.as_bytes())[..SET_ID_HEX_LEN / 2])
}

fn parse_mnemonic(words: &str) -> Result<bip39::Mnemonic, PaperError> {
    bip39::Mnemonic::parse(words).map_err(|e| {
        PaperError::Mnemonic(match e {
            bip39::Error::BadWordCount(_) => "wrong number of words",
            bip39::Error::UnknownWord(_) => "a word is not in the BIP39 English list",
            bip39::Error::InvalidChecksum => "checksum does not match",
            _ => "malformed",
        })
    })
}

fn mnemonic_of_entropy(entropy: &[u8]) -> Result<bip39::Mnemonic, PaperError> {
    bip39::Mnemonic::from_entropy(entropy)
        .map_err(|_| PaperError::Param { field: "entropy", reason: "must be 16, 20, 24, 28 or 32 bytes".into() })
}

/// The account xpub (at [`PAPER_ACCOUNT_PATH`]) and its BIP32 fingerprint, of a mnemonic without passphrase.
fn account_of(mnemonic: &bip39::Mnemonic) -> Result<(String, String), PaperError> {
    let seed = Zeroizing::new(mnemonic.to_seed(""));
    let master = hd::master_from_seed(&seed[..])?;
    let secp = Secp256k1::new();
    let path = DerivationPath::from_str(PAPER_ACCOUNT_PATH).map_err(hd::HdError::from)?;
    let account = master.derive_priv(&secp, &path).map_err(hd::HdError::from)?;
    let xpub = Xpub::from_priv(&secp, &account);
    Ok((xpub.to_string(), hex::encode(xpub.fingerprint().as_bytes())))
}

/// The account xpub of a mnemonic (what a restore must give back).
pub fn account_xpub(words: &str) -> Result<String, PaperError> {
    Ok(account_of(&parse_mnemonic(words)?)?.0)
}

/// Splits a mnemonic's entropy into `shares` sheets, any `threshold` of which restore it.
pub fn backup(words: &str, threshold: u8, shares: u8) -> Result<PaperBackup, PaperError> {
    let mnemonic = parse_mnemonic(words)?;
    let entropy = Zeroizing::new(mnemonic.to_entropy());
    backup_entropy(&entropy, threshold, shares)
}

/// [`backup`] from the BIP39 entropy itself.
pub fn backup_entropy(entropy: &[u8], threshold: u8, shares: u8) -> Result<PaperBackup, PaperError> {
    check_threshold(threshold, shares)?;
    let mnemonic = mnemonic_of_entropy(entropy)?;
    let (account_xpub, account_fingerprint) = account_of(&mnemonic)?;
    let set_id = set_id_of(&account_xpub);
    let paper: Vec<PaperShare> = blahaj::Sharks(threshold)
        .dealer(entropy)
        .take(usize::from(shares))
        .map(|share| {
            let bytes = Zeroizing::new(Vec::from(&share));
            PaperShare {
                set_id: set_id.clone(),
                threshold,
                shares,
                index: bytes[0],
                payload: Zeroizing::new(bytes[1..].to_vec()),
            }
        })
        .collect();
    if paper.len() != usize::from(shares) || paper.iter().enumerate().any(|(i, s)| usize::from(s.index) != i + 1) {
        return Err(PaperError::Param { field: "shares", reason: "the dealer did not give 1..=N".into() });
    }
    // Fail closed before anything is printed: every K-subset of the sheets must give the entropy back.
    // SHARES_MAX bounds this at 2^16 subsets of cheap GF(256) interpolations.
    for mask in 0u32..(1u32 << shares) {
        if mask.count_ones() != u32::from(threshold) {
            continue;
        }
        let subset: Vec<&PaperShare> = paper.iter().filter(|s| mask & (1 << (s.index - 1)) != 0).collect();
        if combine_entropy(threshold, &subset)?[..] != entropy[..] {
            return Err(PaperError::Param { field: "shares", reason: "a subset does not restore the seed".into() });
        }
    }
    Ok(PaperBackup {
        account_path: PAPER_ACCOUNT_PATH,
        account_xpub,
        account_fingerprint,
        set_id,
        threshold,
        shares: paper,
    })
}

fn combine_entropy(threshold: u8, shares: &[&PaperShare]) -> Result<Zeroizing<Vec<u8>>, PaperError> {
    let parsed: Vec<blahaj::Share> = shares
        .iter()
        .map(|s| blahaj::Share::try_from(&s.blahaj_bytes()[..]))
        .collect::<Result<_, _>>()
        .map_err(|_| PaperError::Param { field: "shares", reason: "a share does not parse".into() })?;
    let secret = blahaj::Sharks(threshold)
        .recover(parsed.iter())
        .map_err(|_| PaperError::Param { field: "shares", reason: "the shares do not recover a secret".into() })?;
    Ok(Zeroizing::new(secret))
}

/// Combines share texts (at least K of one set, distinct indexes) into the mnemonic, and checks that its
/// account xpub is the one the set was made from.
pub fn restore<S: AsRef<str>>(texts: &[S]) -> Result<Restored, PaperError> {
    if texts.len() > RESTORE_INPUTS_MAX {
        return Err(PaperError::Param {
            field: "shares",
            reason: format!("at most {RESTORE_INPUTS_MAX} share texts, got {}", texts.len()),
        });
    }
    let parsed: Vec<PaperShare> =
        texts.iter().enumerate().map(|(i, t)| PaperShare::parse(t.as_ref(), i + 1)).collect::<Result<_, _>>()?;
    let Some(first) = parsed.first() else {
        return Err(PaperError::Param { field: "shares", reason: "no share given".into() });
    };
    for (i, share) in parsed.iter().enumerate().skip(1) {
        let position = i + 1;
        if share.set_id != first.set_id {
            return Err(PaperError::WrongSet {
                position,
                index: share.index,
                expected: first.set_id.clone(),
                got: share.set_id.clone(),
            });
        }
        if (share.threshold, share.shares) != (first.threshold, first.shares) {
            return Err(PaperError::Share {
                position,
                reason: format!(
                    "says {}-of-{}, but share 1 of the same set says {}-of-{}",
                    share.threshold, share.shares, first.threshold, first.shares
                ),
            });
        }
        if share.payload.len() != first.payload.len() {
            return Err(PaperError::Share { position, reason: "payload length differs from share 1's".into() });
        }
        if let Some(earlier) = parsed[..i].iter().position(|s| s.index == share.index) {
            return Err(PaperError::DuplicateIndex { position, index: share.index, first: earlier + 1 });
        }
    }
    if parsed.len() < usize::from(first.threshold) {
        return Err(PaperError::NotEnoughShares {
            set_id: first.set_id.clone(),
            have: parsed.len(),
            need: first.threshold,
            total: first.shares,
        });
    }
    let refs: Vec<&PaperShare> = parsed.iter().collect();
    let entropy = combine_entropy(first.threshold, &refs)?;
    let mnemonic = mnemonic_of_entropy(&entropy)?;
    let (account_xpub, account_fingerprint) = account_of(&mnemonic)?;
    if set_id_of(&account_xpub) != first.set_id {
        return Err(PaperError::SetMismatch { set_id: first.set_id.clone() });
    }
    let mut words = Zeroizing::new(String::with_capacity(24 * 9));
    let _ = write!(&mut *words, "{mnemonic}");
    Ok(Restored {
        set_id: first.set_id.clone(),
        account_path: PAPER_ACCOUNT_PATH,
        account_xpub,
        account_fingerprint,
        mnemonic: words,
    })
}

/// The QR code of a share (error correction Q: a quarter of the code may be smudged or torn).
pub fn share_qr(share: &PaperShare) -> Result<QrCode, PaperError> {
    QrCode::with_error_correction_level(share.to_text().as_bytes(), EcLevel::Q)
        .map_err(|e| PaperError::Qr(e.to_string()))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One A4 SVG page for one share: QR code, text form, set, "share i of n, any k restore", the account xpub
/// and its fingerprint, and the handling warning.
pub fn render_svg(backup: &PaperBackup, share: &PaperShare) -> Result<Zeroizing<String>, PaperError> {
    let code = share_qr(share)?;
    let modules = u32::try_from(code.width()).map_err(|_| PaperError::Qr("too wide".into()))?;
    let module_size = (QR_SIZE_TARGET / (modules + 2 * QR_QUIET_ZONE_MODULES)).max(1);
    let qr_size = module_size * (modules + 2 * QR_QUIET_ZONE_MODULES);
    let qr_svg = Zeroizing::new(
        code.render::<qrcode::render::svg::Color>()
            .quiet_zone(true)
            .module_dimensions(module_size, module_size)
            .build(),
    );
    // The renderer writes a standalone document; its <svg> element nests as it is inside the page.
    let Some(start) = qr_svg.find("<svg") else {
        return Err(PaperError::Qr("renderer output has no <svg> element".into()));
    };
    let (i, n, k) = (share.index, share.shares, share.threshold);
    let mut p = Zeroizing::new(String::with_capacity(qr_svg.len() + 8 * 1024));
    let _ = write!(
        &mut *p,
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
            "\n",
            r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="210mm" height="297mm" "#,
            r#"viewBox="0 0 {w} {h}">"#,
            "\n",
            r#"<title>kinko paper backup: set {set}, share {i} of {n}</title>"#,
            "\n",
            r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>"##,
            "\n",
            r##"<g font-family="DejaVu Sans, Helvetica, Arial, sans-serif" fill="#000">"##,
            "\n",
            r#"<text x="150" y="160" font-size="55">kinko: paper backup of a cold seed (K17)</text>"#,
            "\n",
            r#"<text x="150" y="260" font-size="80" font-weight="bold">SHARE {i} OF {n}: ANY {k} RESTORE</text>"#,
            "\n",
            r#"<text x="150" y="340" font-size="50">Set {set}</text>"#,
            "\n</g>\n",
        ),
        w = PAGE_WIDTH,
        h = PAGE_HEIGHT,
        set = xml_escape(&share.set_id),
        i = i,
        n = n,
        k = k,
    );
    let _ = write!(&mut *p, r#"<g transform="translate({},{QR_TOP})">"#, (PAGE_WIDTH - qr_size) / 2);
    p.push_str(&qr_svg[start..]);
    p.push_str("</g>\n");
    let mut y = QR_TOP + qr_size + 110;
    p.push_str(r##"<g font-family="DejaVu Sans Mono, Courier New, monospace" font-size="50" fill="#000">"##);
    p.push('\n');
    for line in share.text_lines() {
        let _ = write!(&mut *p, r#"<text x="150" y="{y}" class="{SHARE_TEXT_CLASS}">{}</text>"#, xml_escape(&line));
        p.push('\n');
        y += 70;
    }
    p.push_str("</g>\n");
    y += 50;
    let _ = write!(
        &mut *p,
        r##"<g font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="38" fill="#000"><text x="150" y="{y}">Account xpub ({}), public: a restore must show exactly this.</text>"##,
        xml_escape(backup.account_path)
    );
    p.push('\n');
    y += 60;
    let xpub_chars: Vec<char> = backup.account_xpub.chars().collect();
    for chunk in xpub_chars.chunks(56) {
        let line: String = chunk.iter().collect();
        let _ = write!(
            &mut *p,
            r#"<text x="150" y="{y}" font-family="DejaVu Sans Mono, monospace">{}</text>"#,
            xml_escape(&line)
        );
        p.push('\n');
        y += 55;
    }
    let _ = write!(
        &mut *p,
        r#"<text x="150" y="{y}">Account key fingerprint {}; set id = first 8 hex digits of sha256(xpub).</text>"#,
        xml_escape(&backup.account_fingerprint)
    );
    p.push_str("</g>\n");
    y += 140;
    let warning = [
        format!("SECRET. Any {k} of these {n} sheets rebuild the cold key; fewer reveal nothing."),
        "Keep this sheet sealed, with its custodian, apart from the other sheets.".to_string(),
        "Never photograph it, scan it or type it on a networked machine.".to_string(),
        "Restore only on the air-gapped machine: kinko-offline paper-restore.".to_string(),
    ];
    let box_height = 60 * warning.len() as u32 + 50;
    let _ = write!(
        &mut *p,
        r##"<rect x="120" y="{}" width="{}" height="{box_height}" fill="none" stroke="#000" stroke-width="6"/>"##,
        y - 60,
        PAGE_WIDTH - 240
    );
    p.push('\n');
    p.push_str(r##"<g font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="40" font-weight="bold" fill="#000">"##);
    for line in &warning {
        let _ = write!(&mut *p, r#"<text x="150" y="{y}">{}</text>"#, xml_escape(line));
        y += 60;
    }
    p.push_str("</g>\n</svg>\n");
    Ok(p)
}

/// Writes one page per share into `dir` (created 0700 if missing), each file 0600 and never over an
/// existing one. Returns the paths, in share order.
pub fn write_pages(backup: &PaperBackup, dir: &Path) -> Result<Vec<PathBuf>, PaperError> {
    create_private_dir(dir)?;
    let mut paths = Vec::with_capacity(backup.shares.len());
    for share in &backup.shares {
        let path = dir.join(format!("kinko-paper-{}-share-{}-of-{}.svg", share.set_id, share.index, share.shares));
        write_private(&path, render_svg(backup, share)?.as_bytes())?;
        paths.push(path);
    }
    Ok(paths)
}

fn create_private_dir(dir: &Path) -> Result<(), PaperError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_error(dir))
}

/// Creates `path` with mode 0600; refuses to overwrite.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PaperError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Reads a share from a file: either its text form, or an SVG page written by [`write_pages`] (the
/// text-form lines are read back from it).
pub fn read_share_file(path: &Path) -> Result<Zeroizing<String>, PaperError> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut content = Zeroizing::new(String::new());
    file.take(SHARE_FILE_LEN_MAX + 1).read_to_string(&mut content).map_err(io_error(path))?;
    if content.len() as u64 > SHARE_FILE_LEN_MAX {
        return Err(PaperError::Param {
            field: "share-file",
            reason: format!("{} is over {SHARE_FILE_LEN_MAX} bytes", path.display()),
        });
    }
    if !content.contains("<svg") {
        return Ok(Zeroizing::new(content.trim().to_string()));
    }
    let marker = format!(r#"class="{SHARE_TEXT_CLASS}">"#);
    let mut text = Zeroizing::new(String::with_capacity(256));
    let mut rest: &str = &content;
    while let Some(at) = rest.find(&marker) {
        rest = &rest[at + marker.len()..];
        let Some(end) = rest.find("</text>") else { break };
        text.push_str(&rest[..end]);
        rest = &rest[end..];
    }
    if text.is_empty() {
        return Err(PaperError::Param {
            field: "share-file",
            reason: format!("{} is an SVG without a kinko share text", path.display()),
        });
    }
    Ok(text)
}

/// Reads a mnemonic from a reader (stdin in the tool), bounded; the caller never takes it from argv.
pub fn read_mnemonic(reader: impl Read) -> Result<Zeroizing<String>, PaperError> {
    let mut words = Zeroizing::new(String::with_capacity(512));
    reader
        .take(MNEMONIC_INPUT_LEN_MAX + 1)
        .read_to_string(&mut words)
        .map_err(|source| PaperError::Io { path: "stdin".into(), source })?;
    if words.len() as u64 > MNEMONIC_INPUT_LEN_MAX {
        return Err(PaperError::Mnemonic("input is too long"));
    }
    let normalised = Zeroizing::new(words.split_whitespace().collect::<Vec<_>>().join(" "));
    Ok(normalised)
}

/// `kinko-offline paper-backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Read the seed words from stdin (the only way: words never go on the command line, where other
    /// processes and the shell history see them).
    #[arg(long, required = true)]
    pub mnemonic_stdin: bool,
    /// How many sheets restore the seed (K).
    #[arg(long)]
    pub threshold: u8,
    /// How many sheets to print (N), one per custodian.
    #[arg(long)]
    pub shares: u8,
    /// Directory for the SVG pages (created 0700; existing pages are never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

/// `kinko-offline paper-restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A share file: an SVG page written by paper-backup, or a file holding the share's text (repeat).
    #[arg(long = "share-file")]
    pub share_files: Vec<PathBuf>,
    /// A share's text (repeat). Visible to other processes on this machine: prefer --share-file or
    /// --shares-stdin.
    #[arg(long = "share-text")]
    pub share_texts: Vec<String>,
    /// Read share texts from stdin: each starts on a line beginning with KINKO-PAPER-; the grouped lines
    /// printed on a sheet may be typed as they are.
    #[arg(long)]
    pub shares_stdin: bool,
    /// Fail unless the restored account xpub is exactly this one.
    #[arg(long)]
    pub expect_xpub: Option<String>,
    /// Fail unless the restored account xpub is this cold keystore's (keystore.json).
    #[arg(long)]
    pub keystore: Option<PathBuf>,
    /// Write the restored seed words to this new file (mode 0600); they are never printed.
    #[arg(long)]
    pub mnemonic_out: Option<PathBuf>,
}

/// Runs `paper-backup`: words from stdin, pages to `--out`, the public facts to `out`.
pub fn run_backup(args: &BackupArgs, stdin: impl Read, out: &mut impl std::io::Write) -> Result<(), PaperError> {
    if !args.mnemonic_stdin {
        return Err(PaperError::Param {
            field: "mnemonic-stdin",
            reason: "the seed words are read from stdin only".into(),
        });
    }
    let words = read_mnemonic(stdin)?;
    let backup = backup(&words, args.threshold, args.shares)?;
    drop(words);
    let pages = write_pages(&backup, &args.out)?;
    let stdout = |e| PaperError::Io { path: "stdout".into(), source: e };
    writeln!(out, "paper backup: set {}, any {} of {} sheets restore", backup.set_id, backup.threshold, pages.len())
        .map_err(stdout)?;
    writeln!(out, "account xpub ({}): {}", backup.account_path, backup.account_xpub).map_err(stdout)?;
    writeln!(out, "account key fingerprint: {}", backup.account_fingerprint).map_err(stdout)?;
    for page in &pages {
        writeln!(out, "page (0600): {}", page.display()).map_err(stdout)?;
    }
    writeln!(
        out,
        "Print each page, check the xpub on it against the keystore's, hand each sheet to a different custodian, \
         then destroy the files."
    )
    .map_err(stdout)?;
    Ok(())
}

/// Splits stdin into share texts: a share starts at a line beginning with `KINKO-PAPER-` (any case), and
/// the lines after it (the printed groups) belong to it.
fn split_share_texts(input: &str) -> Vec<Zeroizing<String>> {
    let mut texts: Vec<Zeroizing<String>> = Vec::new();
    for line in input.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let starts = line.len() >= FORMAT_TAG_FAMILY.len()
            && line[..FORMAT_TAG_FAMILY.len()].eq_ignore_ascii_case(FORMAT_TAG_FAMILY);
        match texts.last_mut() {
            Some(current) if !starts => current.push_str(line),
            _ => texts.push(Zeroizing::new(line.to_string())),
        }
    }
    texts
}

/// Runs `paper-restore`: share texts from files, arguments and stdin (numbered in that order in errors),
/// the restored account xpub to `out`.
pub fn run_restore(args: &RestoreArgs, stdin: impl Read, out: &mut impl std::io::Write) -> Result<(), PaperError> {
    let mut labels: Vec<String> = Vec::new();
    let mut texts: Vec<Zeroizing<String>> = Vec::new();
    for path in &args.share_files {
        if texts.len() >= RESTORE_INPUTS_MAX {
            break;
        }
        texts.push(read_share_file(path)?);
        labels.push(path.display().to_string());
    }
    for (i, text) in args.share_texts.iter().enumerate() {
        texts.push(Zeroizing::new(text.clone()));
        labels.push(format!("--share-text number {}", i + 1));
    }
    if args.shares_stdin {
        let mut input = Zeroizing::new(String::new());
        stdin
            .take(SHARE_TEXT_LEN_MAX as u64 * RESTORE_INPUTS_MAX as u64)
            .read_to_string(&mut input)
            .map_err(|source| PaperError::Io { path: "stdin".into(), source })?;
        for (i, text) in split_share_texts(&input).into_iter().enumerate() {
            texts.push(text);
            labels.push(format!("stdin share {}", i + 1));
        }
    }
    let expected = match (&args.expect_xpub, &args.keystore) {
        (Some(_), Some(_)) => {
            return Err(PaperError::Param {
                field: "expect-xpub",
                reason: "give --expect-xpub or --keystore, not both".into(),
            });
        }
        (Some(x), None) => Some(x.trim().to_string()),
        (None, Some(path)) => Some(
            crate::keystore::Keystore::read(path)
                .map_err(|e| PaperError::Param { field: "keystore", reason: e.to_string() })?
                .account_xpub,
        ),
        (None, None) => None,
    };
    let restored = restore(&texts).map_err(|e| match e.position() {
        Some(p) if p <= labels.len() => PaperError::Input { label: labels[p - 1].clone(), cause: Box::new(e) },
        _ => e,
    })?;
    if let Some(expected) = expected
        && expected != restored.account_xpub
    {
        return Err(PaperError::Param {
            field: "expect-xpub",
            reason: format!("the shares restore account xpub {}, not {expected}", restored.account_xpub),
        });
    }
    if let Some(path) = &args.mnemonic_out {
        let mut line = Zeroizing::new(String::with_capacity(restored.mnemonic.len() + 1));
        line.push_str(&restored.mnemonic);
        line.push('\n');
        write_private(path, line.as_bytes())?;
    }
    let stdout = |e| PaperError::Io { path: "stdout".into(), source: e };
    writeln!(out, "restored set {} from {} shares", restored.set_id, texts.len()).map_err(stdout)?;
    writeln!(out, "account xpub ({}): {}", restored.account_path, restored.account_xpub).map_err(stdout)?;
    writeln!(out, "account key fingerprint: {}", restored.account_fingerprint).map_err(stdout)?;
    if let Some(path) = &args.mnemonic_out {
        writeln!(out, "seed words written (0600): {}", path.display()).map_err(stdout)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
    const ABANDON_24: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
        abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon art";

    #[test]
    fn k17_text_form_round_trips_and_is_qr_alphanumeric() {
        let b = backup(ABANDON_24, 3, 5).unwrap();
        for s in &b.shares {
            let text = s.to_text();
            assert!(text.starts_with(&format!("{FORMAT_TAG}:{}:3-OF-5:{}:", b.set_id, s.index)), "{}", *text);
            assert!(text.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || b"-:".contains(&c)));
            let back = PaperShare::parse(&text, 1).unwrap();
            assert_eq!(*back.to_text(), *text);
            // The grouped, lower-cased form typed from the sheet parses to the same share.
            let typed: String = s.text_lines().iter().map(|l| l.to_lowercase() + "\n").collect();
            assert_eq!(*PaperShare::parse(&typed, 1).unwrap().to_text(), *text);
        }
    }

    #[test]
    fn k17_every_k_subset_restores_and_k_minus_one_does_not() {
        let b = backup(TEST_MNEMONIC, 3, 5).unwrap();
        let texts: Vec<Zeroizing<String>> = b.shares.iter().map(|s| s.to_text()).collect();
        for mask in 0u32..32 {
            let subset: Vec<&str> =
                texts.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, t)| t.as_str()).collect();
            match subset.len() {
                0 => assert!(restore(&subset).is_err()),
                1 | 2 => assert!(matches!(restore(&subset), Err(PaperError::NotEnoughShares { need: 3, .. }))),
                _ => {
                    let r = restore(&subset).unwrap();
                    assert_eq!(*r.mnemonic, TEST_MNEMONIC);
                    assert_eq!(r.account_xpub, b.account_xpub);
                }
            }
        }
    }

    #[test]
    fn k17_set_id_and_xpub_are_the_cold_accounts() {
        let b = backup(TEST_MNEMONIC, 2, 3).unwrap();
        let seed = kinko_keys::seed::MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
        let xpub = hd::evm_deposit_xpub(&seed.to_bip32_master().unwrap()).unwrap();
        assert_eq!(b.account_xpub, xpub.to_string());
        assert_eq!(b.set_id, set_id_of(&xpub.to_string()));
        assert_eq!(b.set_id.len(), 8);
    }

    #[test]
    fn k17_checksum_catches_any_single_character_change() {
        let b = backup(TEST_MNEMONIC, 2, 3).unwrap();
        let text = b.shares[1].to_text();
        let alphabet = b"0123456789ABCDEF";
        for pos in FORMAT_TAG.len() + 1..text.len() {
            let c = text.as_bytes()[pos];
            if c == b':' || c == b'-' {
                continue;
            }
            let mut t = text.as_bytes().to_vec();
            t[pos] = if alphabet[0] == c { alphabet[1] } else { alphabet[0] };
            let t = String::from_utf8(t).unwrap();
            let e = PaperShare::parse(&t, 2).unwrap_err();
            assert!(matches!(e, PaperError::Share { position: 2, .. }), "{pos}: {e}");
        }
    }

    #[test]
    fn k17_mixed_backups_of_one_seed_are_refused_after_combination() {
        let a = backup(TEST_MNEMONIC, 2, 3).unwrap();
        let b = backup(TEST_MNEMONIC, 2, 3).unwrap();
        assert_eq!(a.set_id, b.set_id);
        let e = restore(&[a.shares[0].to_text(), b.shares[1].to_text()]).unwrap_err();
        assert!(matches!(e, PaperError::SetMismatch { .. }), "{e}");
    }

    #[test]
    fn k17_bad_parameters_and_inputs_are_named() {
        assert!(matches!(backup(TEST_MNEMONIC, 1, 3), Err(PaperError::Param { field: "threshold", .. })));
        assert!(matches!(backup(TEST_MNEMONIC, 4, 3), Err(PaperError::Param { field: "threshold", .. })));
        assert!(matches!(backup(TEST_MNEMONIC, 2, SHARES_MAX + 1), Err(PaperError::Param { field: "shares", .. })));
        let e = backup("zzzzsecret test test test test test test test test test test junk", 2, 3).unwrap_err();
        assert!(!e.to_string().contains("zzzzsecret"), "{e}");
        for (text, needle) in [
            ("", "empty"),
            ("hello", "not a kinko paper share"),
            ("KINKO-PAPER-V2:00000000:2-OF-3:1:00:00000000", "unsupported format"),
            ("KINKO-PAPER-V1:1:2:3", "fields"),
        ] {
            let e = PaperShare::parse(text, 4).unwrap_err().to_string();
            assert!(e.starts_with("share 4: ") && e.contains(needle), "{text:?}: {e}");
        }
        let long = "A".repeat(SHARE_TEXT_LEN_MAX + 1);
        assert!(PaperShare::parse(&long, 1).is_err());
    }

    #[test]
    fn k17_debug_and_errors_show_no_share_payload() {
        let b = backup(TEST_MNEMONIC, 2, 3).unwrap();
        let text = b.shares[0].to_text();
        let payload = text.split(':').nth(4).unwrap().to_string();
        let shown = format!("{b:?}");
        assert!(!shown.contains(&payload), "{shown}");
        let r = restore(&[b.shares[0].to_text(), b.shares[2].to_text()]).unwrap();
        assert!(!format!("{r:?}").contains("junk"));
        let mut tampered = text.to_string();
        tampered.replace_range(40..41, if &tampered[40..41] == "0" { "1" } else { "0" });
        let e = restore(&[tampered.as_str(), &b.shares[1].to_text()]).unwrap_err().to_string();
        assert!(!e.contains(&payload[..16]), "{e}");
    }

    #[test]
    fn k17_qr_matrix_decodes_to_the_share_text() {
        let b = backup(ABANDON_24, 2, 3).unwrap();
        let text = b.shares[2].to_text();
        let code = share_qr(&b.shares[2]).unwrap();
        let (decoded, version) = decode_qr_matrix(&code);
        assert_eq!(decoded, *text);
        // Alphanumeric mode keeps a 24-word share in a small code.
        assert!(version <= 7, "version {version}");
    }

    #[test]
    fn k17_restore_reads_typed_sheets_from_stdin_and_checks_the_expected_xpub() {
        let b = backup(TEST_MNEMONIC, 2, 3).unwrap();
        // Two sheets typed as printed: grouped lines, lower case, blank lines between.
        let mut typed = String::new();
        for s in [&b.shares[2], &b.shares[0]] {
            for line in s.text_lines() {
                typed.push_str(&line.to_lowercase());
                typed.push('\n');
            }
            typed.push('\n');
        }
        let args = |expect_xpub: Option<String>| RestoreArgs {
            share_files: vec![],
            share_texts: vec![],
            shares_stdin: true,
            expect_xpub,
            keystore: None,
            mnemonic_out: None,
        };
        let mut out = Vec::new();
        run_restore(&args(Some(b.account_xpub.clone())), typed.as_bytes(), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains(&b.account_xpub) && !out.contains("junk"), "{out}");
        let other = account_xpub(
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        )
        .unwrap();
        let e = run_restore(&args(Some(other)), typed.as_bytes(), &mut Vec::new()).unwrap_err();
        assert!(matches!(e, PaperError::Param { field: "expect-xpub", .. }), "{e}");
        // A damaged typed sheet is named by where it came from.
        let damaged = typed.replacen("kinko-paper-v1", "kinko-paper-v1x", 1);
        let e = run_restore(&args(None), damaged.as_bytes(), &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("share 1 is stdin share 1"), "{e}");
    }

    /// Paints the module matrix (4 px a module, 4-module quiet zone) and reads it with rqrr.
    fn decode_qr_matrix(code: &QrCode) -> (String, usize) {
        const PX: usize = 4;
        const QUIET: usize = 4;
        let w = code.width();
        let colors = code.to_colors();
        let side = (w + 2 * QUIET) * PX;
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| {
            let (mx, my) = (x / PX, y / PX);
            if mx < QUIET || my < QUIET || mx >= QUIET + w || my >= QUIET + w {
                return 255;
            }
            match colors[(my - QUIET) * w + (mx - QUIET)] {
                qrcode::Color::Dark => 0,
                qrcode::Color::Light => 255,
            }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1);
        let (meta, content) = grids[0].decode().unwrap();
        (content, meta.version.0)
    }
}
