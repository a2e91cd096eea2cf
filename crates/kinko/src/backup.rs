//! `kinko backup` and `kinko restore` (A4, K17): an encrypted, integrity-protected logical backup of the
//! whole database and the key files beside it, and its restore into an empty target.
//!
//! # File format (version 1)
//!
//! ```text
//! magic "KINKOBAK" | header length (u32 BE) | header JSON | sha256(magic ‖ length ‖ header JSON)
//! | STREAM chunks (XChaCha20-Poly1305, 19-byte nonce prefix ‖ u32 BE counter ‖ last-chunk flag)
//! ```
//!
//! The header is plain (it carries what is needed to derive the key: argon2id parameters and salt, the
//! nonce prefix, a key check value; and the creation time and instance id) and is the associated data of
//! every chunk, so it cannot be changed without every chunk failing. Its sha256 only lets a damaged header
//! be told apart from a wrong passphrase. The chunks use the STREAM construction (`aead::stream`): each
//! chunk's nonce holds its position and whether it is the last one, so reordering, dropping, duplicating
//! or truncating chunks fails authentication.
//!
//! Inside, JSON lines: a `begin` record (format version, time, instance, source backend, the applied
//! migrations and the table list), then per table a `table` record (its columns) followed by one JSON
//! array per row, then `file` records (the key files that live outside the database), then an `end`
//! record: row count and sha256 of each table's lines, length and sha256 of each file. Restore recomputes
//! them all.
//!
//! # Keys
//!
//! The backup never holds an unwrapped key it had to unwrap: the `keys` rows are wrapped by a KEK, the
//! KEKs (`keks`) by the master key, which is never stored and comes back only from K custodian shares.
//! `kinko backup` never sees the master key or a KEK. Two key files live beside the database as plain
//! files and go into the backup only inside its encryption: the audit key (needed to keep appending to
//! the restored audit chain) and, in dev mode only, the 1-of-1 dev share.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, Payload};
use clap::Args;
use hmac::{Hmac, Mac};
use kinko_server::Config;
use kinko_store::Store;
use kinko_store::backup::{AppliedMigration, TableSchema, check_row};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 8] = b"KINKOBAK";
pub const FORMAT_VERSION: u32 = 1;
const CIPHER: &str = "xchacha20poly1305-stream-be32";
/// Plaintext bytes per chunk.
pub const CHUNK_LEN: usize = 64 * 1024;
const TAG_LEN: usize = 16;
/// XChaCha20's 24-byte nonce less STREAM-BE32's 5 bytes (counter and last flag).
const NONCE_PREFIX_LEN: usize = 19;
const SALT_LEN: usize = 16;
/// argon2id for the backup key: 64 MiB, 3 passes, 1 lane (RFC 9106's second recommended option; above
/// OWASP's minimum of 19 MiB / 2 passes). Stored in the header so it can be raised later.
pub const ARGON2_M_COST_KIB: u32 = 64 * 1024;
pub const ARGON2_T_COST: u32 = 3;
pub const ARGON2_P_COST: u32 = 1;
/// Bounds on parameters read from a header, so a crafted file cannot make opening it take forever.
const ARGON2_M_COST_KIB_MAX: u32 = 1024 * 1024;
const ARGON2_T_COST_MAX: u32 = 16;
const ARGON2_P_COST_MAX: u32 = 16;
/// Bound on the plain header.
const HEADER_LEN_MAX: u32 = 64 * 1024;
/// Bound on one JSON line inside the backup (a row or a record).
pub const LINE_LEN_MAX: u64 = 16 * 1024 * 1024;
/// Bound on a key file carried in the backup.
const FILE_LEN_MAX: usize = 64 * 1024;
/// A backup passphrase shorter than this is refused: it is the only thing between the file and its keys.
pub const PASSPHRASE_LEN_MIN: usize = 16;
/// Default environment variable holding the backup passphrase.
pub const PASSPHRASE_ENV_DEFAULT: &str = "KINKO_BACKUP_PASSPHRASE";
const KEY_CHECK_LABEL: &[u8] = b"kinko-backup-v1/key-check";
const ENCRYPTION_LABEL: &[u8] = b"kinko-backup-v1/encryption";
/// Names of the key files a backup may carry.
const FILE_AUDIT_KEY: &str = "audit_key";
const FILE_DEV_SHARE: &str = "dev_share";

/// Where the passphrase comes from: an environment variable or a file, never the command line.
#[derive(Args, Clone)]
pub struct PassphraseArgs {
    /// Environment variable holding the backup passphrase.
    #[arg(long, default_value = PASSPHRASE_ENV_DEFAULT, conflicts_with = "passphrase_file")]
    passphrase_env: String,
    /// File holding the backup passphrase (one trailing newline is ignored).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct BackupArgs {
    #[arg(long, short, env = "KINKO_CONFIG")]
    config: PathBuf,
    /// The backup file to write; never overwritten.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long = "in")]
    input: PathBuf,
    /// The configuration of the instance to restore: its `data_dir` and database must be empty.
    #[arg(long, short, env = "KINKO_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    passphrase: PassphraseArgs,
    /// Only check the file (passphrase, every chunk, every table's count and hash); write nothing.
    #[arg(long)]
    verify_only: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Kdf {
    algorithm: String,
    version: u32,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    salt_hex: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Header {
    format_version: u32,
    created_at_ms: i64,
    instance_id: String,
    kdf: Kdf,
    cipher: String,
    nonce_prefix_hex: String,
    chunk_len: u32,
    /// HMAC-SHA256(argon2id output, "key-check"): tells a wrong passphrase from a damaged file.
    key_check_hex: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "record", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Begin {
        format_version: u32,
        created_at_ms: i64,
        instance_id: String,
        source_backend: String,
        kinko_version: String,
        migrations: Vec<AppliedMigration>,
        tables: Vec<String>,
    },
    Table {
        table: TableSchema,
    },
    File {
        name: String,
        content_b64: String,
    },
    End {
        tables: Vec<TableDigest>,
        files: Vec<FileDigest>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct TableDigest {
    name: String,
    rows: u64,
    sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct FileDigest {
    name: String,
    len: u64,
    sha256: String,
}

fn now_ms() -> i64 {
    kinko_server::clock::now_ms()
}

fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("loading configuration {}", path.display()))
}

fn read_passphrase(args: &PassphraseArgs) -> Result<Zeroizing<String>> {
    let mut text = match &args.passphrase_file {
        Some(path) => Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("--passphrase-file {}", path.display()))?,
        ),
        None => Zeroizing::new(std::env::var(&args.passphrase_env).with_context(|| {
            format!("the backup passphrase: environment variable {} is not set", args.passphrase_env)
        })?),
    };
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        bail!("the backup passphrase is empty");
    }
    Ok(text)
}

/// The encryption key and the key check value, from the passphrase (argon2id) and two HMAC labels.
fn derive(passphrase: &str, kdf: &Kdf) -> Result<(Zeroizing<[u8; 32]>, Hmac<Sha256>)> {
    if kdf.algorithm != "argon2id" || kdf.version != 0x13 {
        bail!("the backup file is not supported: key derivation {} v{}", kdf.algorithm, kdf.version);
    }
    if kdf.m_cost_kib > ARGON2_M_COST_KIB_MAX || kdf.t_cost > ARGON2_T_COST_MAX || kdf.p_cost > ARGON2_P_COST_MAX {
        bail!("the backup file is corrupted: its argon2id parameters are out of bounds");
    }
    let salt = hex::decode(&kdf.salt_hex).context("the backup file is corrupted: salt is not hex")?;
    let params = argon2::Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| anyhow::anyhow!("the backup file is corrupted: argon2id parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut master = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), &salt, &mut master[..])
        .map_err(|e| anyhow::anyhow!("deriving the backup key: {e}"))?;
    let mac = |label: &[u8]| -> Result<Hmac<Sha256>> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&master[..]).context("hmac key")?;
        m.update(label);
        Ok(m)
    };
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&mac(ENCRYPTION_LABEL)?.finalize().into_bytes());
    Ok((key, mac(KEY_CHECK_LABEL)?))
}

fn header_prefix(header_json: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(header_json.len()).context("header too long")?;
    let mut out = Vec::with_capacity(12 + header_json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(header_json);
    Ok(out)
}

/// Encrypts a plaintext stream into STREAM chunks, every chunk authenticated with the header as AAD.
struct ChunkWriter<W: Write> {
    out: W,
    enc: Option<EncryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    buf: Zeroizing<Vec<u8>>,
    /// sha256 of everything written to `out` (header included), for the summary.
    file_hash: Sha256,
}

impl<W: Write> ChunkWriter<W> {
    fn write_out(&mut self, bytes: &[u8]) -> Result<()> {
        self.file_hash.update(bytes);
        self.out.write_all(bytes).context("writing the backup file")
    }

    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        // A full chunk is sealed only once more bytes follow it, so the last chunk is never empty-by-accident
        // and always the one flagged last.
        while self.buf.len() > CHUNK_LEN {
            let enc = self.enc.as_mut().context("backup stream already finished")?;
            let sealed = enc
                .encrypt_next(Payload { msg: &self.buf[..CHUNK_LEN], aad: &self.aad })
                .map_err(|_| anyhow::anyhow!("encrypting a backup chunk"))?;
            self.write_out(&sealed)?;
            self.buf.copy_within(CHUNK_LEN.., 0);
            let rest = self.buf.len() - CHUNK_LEN;
            self.buf.truncate(rest);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(W, String)> {
        let enc = self.enc.take().context("backup stream already finished")?;
        let sealed = enc
            .encrypt_last(Payload { msg: &self.buf[..], aad: &self.aad })
            .map_err(|_| anyhow::anyhow!("encrypting the last backup chunk"))?;
        self.write_out(&sealed)?;
        let hash = hex::encode(std::mem::take(&mut self.file_hash).finalize());
        Ok((self.out, hash))
    }
}

/// Decrypts STREAM chunks back into the plaintext, as a `Read`. Errors say which chunk failed.
struct ChunkReader<R: BufRead> {
    inner: R,
    dec: Option<DecryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    plain: Zeroizing<Vec<u8>>,
    pos: usize,
    chunk: u64,
    done: bool,
}

impl<R: BufRead> ChunkReader<R> {
    fn fill(&mut self) -> std::io::Result<()> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let mut sealed = vec![0u8; CHUNK_LEN + TAG_LEN];
        let mut got = 0;
        while got < sealed.len() {
            let n = self.inner.read(&mut sealed[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        sealed.truncate(got);
        let last = self.inner.fill_buf()?.is_empty();
        if got < TAG_LEN {
            return Err(invalid(format!(
                "the backup file is truncated: it ends at chunk {} without the final chunk",
                self.chunk
            )));
        }
        let bad = |chunk: u64| {
            invalid(format!(
                "the backup file is corrupted or was tampered with: chunk {chunk} does not authenticate \
                 (edited, reordered or cut short)"
            ))
        };
        let plain = if last {
            self.done = true;
            let dec = self.dec.take().ok_or_else(|| invalid("backup stream already finished".into()))?;
            dec.decrypt_last(Payload { msg: &sealed, aad: &self.aad }).map_err(|_| bad(self.chunk))?
        } else {
            let dec = self.dec.as_mut().ok_or_else(|| invalid("backup stream already finished".into()))?;
            dec.decrypt_next(Payload { msg: &sealed, aad: &self.aad }).map_err(|_| bad(self.chunk))?
        };
        self.chunk += 1;
        self.plain = Zeroizing::new(plain);
        self.pos = 0;
        Ok(())
    }
}

impl<R: BufRead> Read for ChunkReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Counts bytes read from the file, for the progress bar.
struct Counting<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn bytes_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{{bar:30}} {{bytes}}/{{total_bytes}} {what}"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

// ---------------------------------------------------------------------------------------------------
// kinko backup

pub async fn backup(args: BackupArgs) -> Result<()> {
    let config = load_config(&args.config)?;
    let passphrase = read_passphrase(&args.passphrase)?;
    if passphrase.chars().count() < PASSPHRASE_LEN_MIN {
        bail!("the backup passphrase is shorter than {PASSPHRASE_LEN_MIN} characters");
    }
    if args.out.exists() {
        bail!("{} exists: a backup never overwrites a file", args.out.display());
    }
    let dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut suffix = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    let file_name = args.out.file_name().context("--out must name a file")?.to_string_lossy().to_string();
    let partial = dir.join(format!(".{file_name}.partial-{}", hex::encode(suffix)));
    let result = write_backup(&config, &passphrase, &partial, &file_name).await;
    match result {
        Ok(summary) => {
            // A hard link, not a rename: it fails instead of replacing a file that appeared meanwhile.
            let linked = std::fs::hard_link(&partial, &args.out)
                .with_context(|| format!("moving the finished backup to {}", args.out.display()));
            let _ = std::fs::remove_file(&partial);
            linked?;
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

async fn write_backup(config: &Config, passphrase: &str, partial: &Path, file_name: &str) -> Result<serde_json::Value> {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut prefix = [0u8; NONCE_PREFIX_LEN];
    rand::rngs::OsRng.fill_bytes(&mut prefix);
    let kdf = Kdf {
        algorithm: "argon2id".into(),
        version: 0x13,
        m_cost_kib: ARGON2_M_COST_KIB,
        t_cost: ARGON2_T_COST,
        p_cost: ARGON2_P_COST,
        salt_hex: hex::encode(salt),
    };
    let (key, check) = derive(passphrase, &kdf)?;
    let created_at_ms = now_ms();
    let header = Header {
        format_version: FORMAT_VERSION,
        created_at_ms,
        instance_id: config.instance_id.clone(),
        kdf,
        cipher: CIPHER.into(),
        nonce_prefix_hex: hex::encode(prefix),
        chunk_len: CHUNK_LEN as u32,
        key_check_hex: hex::encode(check.finalize().into_bytes()),
    };
    let header_json = serde_json::to_vec(&header)?;
    let aad = header_prefix(&header_json)?;

    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(partial).with_context(|| format!("creating {}", partial.display()))?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let mut w = ChunkWriter {
        out: std::io::BufWriter::new(file),
        enc: Some(EncryptorBE32::from_aead(cipher, (&prefix).into())),
        aad: aad.clone(),
        buf: Zeroizing::new(Vec::with_capacity(2 * CHUNK_LEN)),
        file_hash: Sha256::new(),
    };
    w.write_out(&aad)?;
    let header_sum = Sha256::digest(&aad);
    w.write_out(&header_sum)?;

    let store = Store::connect(&config.database_url).await?;
    let mut snap = store.begin_snapshot().await?;
    let migrations = snap.migrations().await?;
    let tables = snap.tables().await?;
    let begin = Record::Begin {
        format_version: FORMAT_VERSION,
        created_at_ms,
        instance_id: config.instance_id.clone(),
        source_backend: format!("{:?}", store.backend()).to_lowercase(),
        kinko_version: env!("CARGO_PKG_VERSION").into(),
        migrations,
        tables: tables.iter().map(|t| t.name.clone()).collect(),
    };
    push_line(&mut w, &serde_json::to_vec(&begin)?)?;

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} backing up {msg}: {pos} rows")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let mut digests = Vec::with_capacity(tables.len());
    let mut total_rows = 0_u64;
    for table in &tables {
        push_line(&mut w, &serde_json::to_vec(&Record::Table { table: table.clone() })?)?;
        bar.set_message(table.name.clone());
        bar.set_position(0);
        let mut hash = Sha256::new();
        let mut failure: Option<anyhow::Error> = None;
        let rows = snap
            .dump_table(table, |values| {
                let mut line = serde_json::to_vec(&values).map_err(|e| e.to_string())?;
                line.push(b'\n');
                hash.update(&line);
                bar.inc(1);
                w.push(&line).map_err(|e| {
                    let m = e.to_string();
                    failure = Some(e);
                    m
                })
            })
            .await;
        let rows = match (rows, failure) {
            (_, Some(e)) => return Err(e),
            (r, None) => r?,
        };
        total_rows += rows;
        digests.push(TableDigest { name: table.name.clone(), rows, sha256: hex::encode(hash.finalize()) });
    }
    snap.finish().await?;
    bar.finish_and_clear();

    let mut files = Vec::new();
    let mut carried: Vec<(&str, PathBuf)> = vec![(FILE_AUDIT_KEY, kinko_server::audit::key_path(config))];
    if config.dev {
        carried.push((FILE_DEV_SHARE, config.data_dir.join(kinko_server::app::DEV_SHARE_FILE)));
    }
    for (name, path) in carried {
        let content = match std::fs::read(&path) {
            Ok(c) => Zeroizing::new(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("note: {} ({name}) does not exist; the backup does not carry it", path.display());
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if content.len() > FILE_LEN_MAX {
            bail!("{} is larger than {FILE_LEN_MAX} bytes: not a key file", path.display());
        }
        files.push(FileDigest {
            name: name.into(),
            len: content.len() as u64,
            sha256: hex::encode(Sha256::digest(&content[..])),
        });
        let record = Record::File {
            name: name.into(),
            content_b64: base64::engine::general_purpose::STANDARD.encode(&content[..]),
        };
        let line = Zeroizing::new(serde_json::to_vec(&record)?);
        push_line(&mut w, &line)?;
    }
    let end = Record::End { tables: digests.clone(), files: files.clone() };
    let end_json = serde_json::to_vec(&end)?;
    push_line(&mut w, &end_json)?;
    let (out, file_sha256) = w.finish()?;
    let file = out.into_inner().map_err(|e| anyhow::anyhow!("flushing the backup file: {}", e.error()))?;
    file.sync_all().context("syncing the backup file")?;

    // The key access log records the backup (L2) before the file is put in place: if the audit log cannot
    // be written, there is no backup (fail closed). The entry is after the snapshot, so the backup does
    // not contain its own record.
    let sink = kinko_server::audit::AuditSink::from_config(store.clone(), config);
    sink.system("kinko-backup", "key.backup", file_name, header_sum.into(), "ok")
        .await
        .map_err(|e| anyhow::anyhow!("{e}: the backup was not kept"))?;
    store.close().await;
    Ok(serde_json::json!({
        "ok": true,
        "created_at_ms": created_at_ms,
        "instance_id": config.instance_id,
        "tables": digests.len(),
        "rows": total_rows,
        "files": files.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "sha256": file_sha256,
    }))
}

fn push_line<W: Write>(w: &mut ChunkWriter<W>, line: &[u8]) -> Result<()> {
    w.push(line)?;
    w.push(b"\n")
}

// ---------------------------------------------------------------------------------------------------
// Reading a backup

/// One item of a backup's content, checked in order by [`Parser`].
enum Event {
    Table(TableSchema),
    Row { table: String, number: u64, values: Vec<serde_json::Value> },
    File { name: String, content: Zeroizing<Vec<u8>> },
}

struct Begin {
    created_at_ms: i64,
    instance_id: String,
    source_backend: String,
    migrations: Vec<AppliedMigration>,
    tables: Vec<String>,
}

/// Reads the decrypted lines and checks their order and content as it goes; at the `end` record,
/// compares every table's count and hash and every file's length and hash with what was read.
struct Parser {
    lines: BufReader<ChunkReader<BufReader<Counting<std::fs::File>>>>,
    begin: Option<Begin>,
    current: Option<(TableSchema, u64, Sha256)>,
    tables_done: Vec<TableDigest>,
    files_done: Vec<FileDigest>,
    ended: bool,
}

struct Opened {
    header: Header,
    /// sha256 of magic, length and header: names this backup file (random salt and nonce prefix).
    header_sha256: [u8; 32],
    parser: Parser,
}

/// Opens a backup file: magic, header checksum, header, passphrase check; then hands out the parser.
fn open_backup(path: &Path, passphrase: &str, bar: indicatif::ProgressBar) -> Result<Opened> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::new(Counting { inner: file, bar });
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| anyhow::anyhow!("{} is not a kinko backup (too short)", path.display()))?;
    if &magic != MAGIC {
        bail!("{} is not a kinko backup (or its first bytes are corrupted)", path.display());
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).context("the backup file is corrupted: truncated header")?;
    let len = u32::from_be_bytes(len);
    if len > HEADER_LEN_MAX {
        bail!("the backup file is corrupted: header length {len} is out of bounds");
    }
    let mut header_json = vec![0u8; len as usize];
    r.read_exact(&mut header_json).context("the backup file is corrupted: truncated header")?;
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum).context("the backup file is corrupted: truncated header")?;
    let aad = header_prefix(&header_json)?;
    if Sha256::digest(&aad)[..] != sum[..] {
        bail!("the backup file is corrupted: its header does not match its checksum");
    }
    let header: Header =
        serde_json::from_slice(&header_json).context("the backup file is corrupted: the header is not valid")?;
    if header.format_version != FORMAT_VERSION {
        bail!(
            "the backup file has format version {}; this kinko reads version {FORMAT_VERSION}",
            header.format_version
        );
    }
    if header.cipher != CIPHER || header.chunk_len as usize != CHUNK_LEN {
        bail!("the backup file is not supported: cipher {} with chunks of {}", header.cipher, header.chunk_len);
    }
    let (key, check) = derive(passphrase, &header.kdf)?;
    let expected = hex::decode(&header.key_check_hex).context("the backup file is corrupted: key check")?;
    if check.verify_slice(&expected).is_err() {
        bail!("wrong passphrase: the backup's key check does not match (the file itself is intact up to here)");
    }
    let prefix: [u8; NONCE_PREFIX_LEN] = hex::decode(&header.nonce_prefix_hex)
        .ok()
        .and_then(|v| v.try_into().ok())
        .context("the backup file is corrupted: nonce prefix")?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let chunks = ChunkReader {
        inner: r,
        dec: Some(DecryptorBE32::from_aead(cipher, (&prefix).into())),
        aad,
        plain: Zeroizing::new(Vec::new()),
        pos: 0,
        chunk: 0,
        done: false,
    };
    let parser = Parser {
        lines: BufReader::with_capacity(CHUNK_LEN, chunks),
        begin: None,
        current: None,
        tables_done: Vec::new(),
        files_done: Vec::new(),
        ended: false,
    };
    Ok(Opened { header, header_sha256: sum, parser })
}

impl Parser {
    fn read_line(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let mut line = Zeroizing::new(Vec::new());
        let n = (&mut self.lines)
            .take(LINE_LEN_MAX + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            if n as u64 > LINE_LEN_MAX {
                bail!("the backup file is corrupted: a line is longer than {LINE_LEN_MAX} bytes");
            }
            bail!("the backup file is corrupted: its last line is incomplete");
        }
        Ok(Some(line))
    }

    fn close_table(&mut self) {
        if let Some((t, rows, hash)) = self.current.take() {
            self.tables_done.push(TableDigest { name: t.name, rows, sha256: hex::encode(hash.finalize()) });
        }
    }

    /// Reads the `begin` record.
    fn begin(&mut self, header: &Header) -> Result<&Begin> {
        let line = self.read_line()?.context("the backup file is empty")?;
        let record: Record = serde_json::from_slice(&line).context("the backup file is corrupted: begin record")?;
        let Record::Begin { format_version, created_at_ms, instance_id, source_backend, migrations, tables, .. } =
            record
        else {
            bail!("the backup file is corrupted: it does not start with a begin record");
        };
        if format_version != header.format_version
            || created_at_ms != header.created_at_ms
            || instance_id != header.instance_id
        {
            bail!("the backup file is corrupted: its begin record does not match its header");
        }
        Ok(self.begin.insert(Begin { created_at_ms, instance_id, source_backend, migrations, tables }))
    }

    /// The next table, row or file; `None` after a valid `end` record that matched everything read.
    fn next(&mut self) -> Result<Option<Event>> {
        if self.ended {
            return Ok(None);
        }
        let Some(line) = self.read_line()? else {
            bail!("the backup file is truncated: it has no end record");
        };
        if self.begin.is_none() {
            bail!("begin record not read");
        }
        if line.first() == Some(&b'[') {
            let Some((table, rows, hash)) = self.current.as_mut() else {
                bail!("the backup file is corrupted: a row outside any table");
            };
            *rows += 1;
            hash.update(&line[..]);
            let values: Vec<serde_json::Value> = serde_json::from_slice(&line)
                .with_context(|| format!("the backup file is corrupted: row {} of table {}", rows, table.name))?;
            check_row(table, *rows, &values)?;
            return Ok(Some(Event::Row { table: table.name.clone(), number: *rows, values }));
        }
        let record: Record = serde_json::from_slice(&line).context("the backup file is corrupted: a record")?;
        match record {
            Record::Begin { .. } => bail!("the backup file is corrupted: a second begin record"),
            Record::Table { table } => {
                self.close_table();
                let expected = self.begin.as_ref().and_then(|b| b.tables.get(self.tables_done.len()));
                if expected != Some(&table.name) || !self.files_done.is_empty() {
                    bail!("the backup file is corrupted: table {} is out of order", table.name);
                }
                self.current = Some((table.clone(), 0, Sha256::new()));
                Ok(Some(Event::Table(table)))
            }
            Record::File { name, content_b64 } => {
                self.close_table();
                let content = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(content_b64.as_bytes())
                        .context("the backup file is corrupted: a file's content")?,
                );
                if content.len() > FILE_LEN_MAX || self.files_done.iter().any(|f| f.name == name) {
                    bail!("the backup file is corrupted: file {name}");
                }
                self.files_done.push(FileDigest {
                    name: name.clone(),
                    len: content.len() as u64,
                    sha256: hex::encode(Sha256::digest(&content[..])),
                });
                Ok(Some(Event::File { name, content }))
            }
            Record::End { tables, files } => {
                self.close_table();
                let expected = self.begin.as_ref().map_or(0, |b| b.tables.len());
                if self.tables_done.len() != expected {
                    bail!("the backup file is corrupted: {} of {} tables present", self.tables_done.len(), expected);
                }
                for (mine, theirs) in self.tables_done.iter().zip(&tables) {
                    if mine != theirs {
                        bail!(
                            "the backup file is corrupted: table {} has {} rows with sha256 {}, its manifest says {} \
                             rows with {}",
                            mine.name,
                            mine.rows,
                            mine.sha256,
                            theirs.rows,
                            theirs.sha256
                        );
                    }
                }
                if tables.len() != self.tables_done.len() || files != self.files_done {
                    bail!("the backup file is corrupted: its manifest does not match its content");
                }
                if self.read_line()?.is_some() {
                    bail!("the backup file is corrupted: data after the end record");
                }
                self.ended = true;
                Ok(None)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// kinko restore

/// What pass 1 found in a valid backup.
struct Checked {
    header: Header,
    begin: Begin,
    tables: Vec<TableSchema>,
    rows: u64,
    files: Vec<String>,
}

/// Pass 1: reads and checks the whole file, writing nothing.
fn verify_file(path: &Path, passphrase: &str, len: u64) -> Result<Checked> {
    let bar = bytes_bar(len, "verified");
    let Opened { header, mut parser, .. } = open_backup(path, passphrase, bar.clone())?;
    parser.begin(&header)?;
    let mut tables = Vec::new();
    let mut rows = 0;
    let mut files = Vec::new();
    while let Some(event) = parser.next()? {
        match event {
            Event::Table(t) => tables.push(t),
            Event::Row { .. } => rows += 1,
            Event::File { name, .. } => files.push(name),
        }
    }
    bar.finish_and_clear();
    let begin = parser.begin.take().context("begin record not read")?;
    Ok(Checked { header, begin, tables, rows, files })
}

/// The data directory must not exist or hold nothing but the configuration file and the target's own
/// (empty, checked separately) SQLite files.
fn check_data_dir_empty(config: &Config, config_path: &Path) -> Result<()> {
    let dir = &config.data_dir;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading the data directory {}", dir.display())),
    };
    let config_name = config_path.canonicalize().ok();
    let db = kinko_store::backup::sqlite_file(&config.database_url).and_then(|p| {
        let name = p.file_name()?.to_string_lossy().to_string();
        let parent = p.parent()?.canonicalize().ok()?;
        Some((parent, name))
    });
    let canonical_dir = dir.canonicalize()?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if path.canonicalize().ok() == config_name && config_name.is_some() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some((parent, db_name)) = &db
            && *parent == canonical_dir
            && [db_name.clone(), format!("{db_name}-wal"), format!("{db_name}-shm"), format!("{db_name}-journal")]
                .contains(&name)
        {
            continue;
        }
        bail!(
            "the data directory {} is not empty (it holds {name}): restore only into an empty data directory",
            dir.display()
        );
    }
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> Result<()> {
    let config = load_config(&args.config)?;
    let passphrase = read_passphrase(&args.passphrase)?;
    let len = std::fs::metadata(&args.input).with_context(|| format!("opening {}", args.input.display()))?.len();
    let targets = [
        (FILE_AUDIT_KEY, kinko_server::audit::key_path(&config)),
        (FILE_DEV_SHARE, config.data_dir.join(kinko_server::app::DEV_SHARE_FILE)),
    ];
    if !args.verify_only {
        // The target first: a cheap refusal before the key derivation and the reading of a large file.
        check_data_dir_empty(&config, &args.config)?;
        for (_, path) in &targets {
            if path.exists() {
                bail!("{} exists: restore only into an empty target", path.display());
            }
        }
        kinko_store::backup::check_target_empty(&config.database_url).await?;
    }
    let checked = verify_file(&args.input, &passphrase, len)?;
    kinko_store::backup::check_compatible(&checked.begin.migrations, &checked.tables).await?;
    if checked.files.iter().any(|f| f == FILE_DEV_SHARE) && !config.dev {
        bail!("the backup is of a dev instance (it carries the dev share): restore it with a dev configuration");
    }
    let summary = serde_json::json!({
        "created_at_ms": checked.begin.created_at_ms,
        "instance_id": checked.begin.instance_id,
        "source_backend": checked.begin.source_backend,
        "migrations": checked.begin.migrations.last().map(|m| m.version),
        "tables": checked.tables.len(),
        "rows": checked.rows,
        "files": checked.files,
    });
    if args.verify_only {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"ok": true, "verified": summary}))?);
        return Ok(());
    }

    // Everything checked: now write. The rows go in one transaction, so a failure leaves an empty database.
    create_private_dir(&config.data_dir)?;
    let store = Store::connect_for_restore(&config.database_url, &checked.begin.migrations).await?;
    let bar = bytes_bar(len, "restored");
    let Opened { header, header_sha256, mut parser } = open_backup(&args.input, &passphrase, bar.clone())?;
    if header != checked.header {
        bail!("the backup file changed while it was being restored");
    }
    parser.begin(&header)?;
    let mut load = store.begin_load().await?;
    let mut files: Vec<(String, Zeroizing<Vec<u8>>)> = Vec::new();
    while let Some(event) = parser.next()? {
        match event {
            Event::Table(t) => load.table(&t)?,
            Event::Row { table, number, values } => load.insert(&table, number, &values).await?,
            Event::File { name, content } => files.push((name, content)),
        }
    }
    load.commit().await?;
    bar.finish_and_clear();
    store.close().await;
    // This kinko's newer migrations, if any, now that the rows are in.
    let store = Store::connect(&config.database_url).await?;
    for (name, content) in &files {
        let Some((_, path)) = targets.iter().find(|(n, _)| n == name) else {
            bail!("the backup carries an unknown file {name}");
        };
        write_private_file(path, content)?;
    }

    let ledger = store.verify_ledger(|_| {}).await.map_err(|e| {
        anyhow::anyhow!("the restored ledger does not verify: {e} (the data is restored; do not serve from it)")
    })?;
    let audit = verify_audit(&store, &config).await?;
    // The key access log records the restore on the restored chain (L2), signed with the restored audit key.
    if files.iter().any(|(n, _)| n == FILE_AUDIT_KEY) {
        let sink = kinko_server::audit::AuditSink::from_config(store.clone(), &config);
        let object = args.input.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        sink.system("kinko-restore", "key.restore", &object, header_sha256, "ok")
            .await
            .map_err(|e| anyhow::anyhow!("recording the restore in the audit log: {e}"))?;
    }
    store.close().await;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "ok": true,
            "restored": summary,
            "ledger": ledger,
            "audit": audit,
        }))?
    );
    Ok(())
}

/// Verifies the restored audit chain (hash chain, signatures, head), pinned to the configured audit public
/// key when there is one, else to the key the genesis pins.
async fn verify_audit(store: &Store, config: &Config) -> Result<serde_json::Value> {
    const PAGE: i64 = 1_000;
    let pinned = match &config.audit.public_key {
        Some(k) => Some(kinko_core::audit::parse_public_key(k).context("[audit] public_key is not an Ed25519 key")?),
        None => None,
    };
    let head = store.audit_head().await?;
    let mut v = kinko_core::audit::Verifier::new(pinned);
    let mut after = 0_i64;
    loop {
        let rows = store.audit_rows(after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for r in &rows {
            let entry = r
                .to_signed()
                .map_err(|reason| anyhow::anyhow!("the restored audit log does not verify: seq {}: {reason}", r.seq))?;
            v.push(&entry).map_err(|e| anyhow::anyhow!("the restored audit log does not verify: {e}"))?;
        }
    }
    if head.seq == 0 && after == 0 {
        return Ok(serde_json::json!({"entries": 0}));
    }
    let verified = v
        .finish_at_least(u64::try_from(head.seq).unwrap_or(0))
        .map_err(|e| anyhow::anyhow!("the restored audit log does not verify: {e}"))?;
    Ok(serde_json::json!({
        "entries": verified.count,
        "head_seq": verified.head_seq,
        "head_hash": hex::encode(verified.head_hash),
        "public_key": verified.public_key_hex,
    }))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn write_private_file(path: &Path, content: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(content)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(plain: &[u8]) -> (Vec<u8>, Zeroizing<[u8; 32]>, [u8; NONCE_PREFIX_LEN]) {
        let key = Zeroizing::new([7u8; 32]);
        let prefix = [9u8; NONCE_PREFIX_LEN];
        let mut w = ChunkWriter {
            out: Vec::new(),
            enc: Some(EncryptorBE32::from_aead(XChaCha20Poly1305::new((&*key).into()), (&prefix).into())),
            aad: b"hdr".to_vec(),
            buf: Zeroizing::new(Vec::new()),
            file_hash: Sha256::new(),
        };
        w.push(plain).unwrap();
        (w.finish().unwrap().0, key, prefix)
    }

    fn read_all(sealed: &[u8], key: &[u8; 32], prefix: &[u8; NONCE_PREFIX_LEN]) -> std::io::Result<Vec<u8>> {
        let mut r = ChunkReader {
            inner: BufReader::new(sealed),
            dec: Some(DecryptorBE32::from_aead(XChaCha20Poly1305::new(key.into()), prefix.into())),
            aad: b"hdr".to_vec(),
            plain: Zeroizing::new(Vec::new()),
            pos: 0,
            chunk: 0,
            done: false,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    /// A4: the chunked stream round-trips at and around chunk boundaries, and refuses a truncation at a
    /// chunk boundary, a dropped or swapped chunk, and any flipped byte.
    #[test]
    fn a4_k17_chunk_stream_detects_truncation_reordering_and_edits() {
        for len in [0, 1, CHUNK_LEN - 1, CHUNK_LEN, CHUNK_LEN + 1, 3 * CHUNK_LEN] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (sealed, key, prefix) = stream(&plain);
            assert_eq!(read_all(&sealed, &key, &prefix).unwrap(), plain, "len {len}");
        }
        let plain: Vec<u8> = (0..3 * CHUNK_LEN + 10).map(|i| (i % 251) as u8).collect();
        let (sealed, key, prefix) = stream(&plain);
        let full = CHUNK_LEN + TAG_LEN;
        // Cut after two whole chunks: the now-last chunk was not sealed as last.
        assert!(read_all(&sealed[..2 * full], &key, &prefix).is_err());
        // Drop the second chunk.
        let dropped = [&sealed[..full], &sealed[2 * full..]].concat();
        assert!(read_all(&dropped, &key, &prefix).is_err());
        // Swap the first two chunks.
        let swapped = [&sealed[full..2 * full], &sealed[..full], &sealed[2 * full..]].concat();
        assert!(read_all(&swapped, &key, &prefix).is_err());
        for i in [0, full - 1, full, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(read_all(&bad, &key, &prefix).is_err(), "byte {i}");
        }
        assert!(read_all(&sealed, &[8u8; 32], &prefix).is_err(), "another key");
    }

    /// K17: the passphrase key derivation is at least OWASP's argon2id minimum, and a wrong passphrase gives
    /// another key check.
    #[test]
    fn k17_argon2id_parameters_and_key_check() {
        const { assert!(ARGON2_M_COST_KIB >= 19 * 1024 && ARGON2_T_COST >= 2) };
        let kdf = Kdf {
            algorithm: "argon2id".into(),
            version: 0x13,
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
            salt_hex: hex::encode([1u8; SALT_LEN]),
        };
        let (k1, c1) = derive("a long enough passphrase", &kdf).unwrap();
        let (k2, c2) = derive("another long passphrase!", &kdf).unwrap();
        assert_ne!(k1[..], k2[..]);
        let check1 = c1.finalize().into_bytes();
        assert!(c2.verify_slice(&check1).is_err());
        let mut crafted = kdf.clone();
        crafted.m_cost_kib = ARGON2_M_COST_KIB_MAX + 1;
        assert!(derive("a long enough passphrase", &crafted).is_err());
    }
}
