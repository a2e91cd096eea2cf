//! `kinko-offline`: the air-gapped signing tool for cold keys (K14). A separate binary from `kinko`, so the
//! program on the offline machine links no networking code at all (see the crate docs and
//! docs/architecture.md, "Offline signing (K14)").

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use kinko_core::ChainId;
use kinko_core::asset::{AssetKind, AssetSpec};
use kinko_keys::shares::RawShare;
use kinko_offline::bundle::{read_signed, read_unsigned, verify_signed, write_json_0600};
use kinko_offline::keystore::{self, KEYSTORE_FILE, KeygenParams, Keystore};
use kinko_offline::psbt_bundle;
use kinko_offline::record::SignRecord;
use kinko_offline::sign::{self, CONFIRMATION_WORD};
use kinko_signer::approvals::LoggedChange;
use zeroize::Zeroizing;

/// Bound on the confirmation line read from stdin.
const CONFIRMATION_LINE_LEN_MAX: u64 = 64;
/// Bound on the share files one `sign` takes.
const SHARES_MAX: usize = kinko_keys::shares::CUSTODIANS_MAX;

#[derive(Parser)]
#[command(name = "kinko-offline", version, about = "kinko's air-gapped offline signer for cold keys (K14)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generates a cold key: BIP39 seed, wrapped under a master key split into custodian shares; pins the
    /// operator registry, the approval quorum, the chain, the assets and the fee bound.
    Keygen {
        /// Directory for keystore.json and the share files (created; keystore.json must not exist yet).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "cold-1")]
        key_id: String,
        /// A key custodian (repeat): one share file each, DIR/share-<NAME>.json.
        #[arg(long = "custodian", required = true)]
        custodians: Vec<String>,
        /// How many shares unseal the key.
        #[arg(long)]
        threshold: usize,
        /// The operator registry log (JSON array of logged changes) exported by the online side.
        #[arg(long)]
        registry: PathBuf,
        /// How many signing managers must approve each cold signature.
        #[arg(long)]
        quorum: u8,
        #[arg(long)]
        chain_id: u64,
        /// The chain's native coin code and decimals, `CODE:DECIMALS`.
        #[arg(long, default_value = "ETH:18")]
        native: String,
        /// An ERC-20 token the key may move (repeat), `CODE=0xCONTRACT:DECIMALS`.
        #[arg(long = "token")]
        tokens: Vec<String>,
        /// Most one transaction may pay in fees (gas_limit x max_fee_per_gas), wei.
        #[arg(long, default_value_t = kinko_signer::evm::FEE_WEI_MAX_DEFAULT)]
        fee_wei_max: u128,
        /// Protect each share file with its custodian's passphrase ($KINKO_SHARE_PASSPHRASE_<NAME>, else a
        /// prompt).
        #[arg(long)]
        protect_shares: bool,
        /// Print the 24 seed words once (stderr) for a paper backup of the seed itself.
        #[arg(long)]
        show_mnemonic: bool,
    },
    /// Checks an unsigned bundle against the keystore, shows it, asks for confirmation, signs.
    Sign {
        #[arg(long)]
        keystore: PathBuf,
        /// A custodian's share file (repeat, at least the threshold).
        #[arg(long = "share", required = true)]
        shares: Vec<PathBuf>,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the human summary of an unsigned bundle (decoded from its transaction), nothing else.
    Show {
        #[arg(long)]
        bundle: PathBuf,
    },
    /// Prints a cold seed as Shamir shares on paper (K17): one A4 SVG page with a QR code per share.
    PaperBackup(kinko_offline::paper::BackupArgs),
    /// Restores a cold seed from paper shares (K17) and prints its account xpub.
    PaperRestore(kinko_offline::paper::RestoreArgs),
    /// Writes a bundle (or signed file) as numbered QR code frames, `DIR/frame-I-of-N.svg`, and `DIR/frames.txt`.
    QrEncode {
        file: PathBuf,
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Reassembles scanned frames (a file with one frame text per line, any order) into the file.
    QrDecode {
        #[arg(long)]
        frames: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints this keystore's Bitcoin multisig cosigner (master fingerprint, BIP48 path m/48'/coin'/0'/2', account
    /// xpub) as JSON, for the other cosigners and the online wallet (K15).
    BtcCosigner {
        #[arg(long)]
        keystore: PathBuf,
        /// A custodian's share file (repeat, at least the threshold).
        #[arg(long = "share", required = true)]
        shares: Vec<PathBuf>,
        /// bitcoin, testnet, signet, regtest or testnet4.
        #[arg(long)]
        network: bitcoin::Network,
        /// Also write the JSON to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pins the P2WSH multisig wallet this keystore cosigns for (btc-wallet.json next to the keystore; never
    /// overwritten): the threshold, every cosigner (files written by btc-cosigner), the fee bound.
    BtcWallet {
        #[arg(long)]
        keystore: PathBuf,
        #[arg(long)]
        network: bitcoin::Network,
        #[arg(long)]
        threshold: usize,
        /// A cosigner's JSON file (repeat; this keystore's own included).
        #[arg(long = "cosigner", required = true)]
        cosigners: Vec<PathBuf>,
        /// Most one transaction may pay in fees, satoshi.
        #[arg(long)]
        fee_sat_max: u64,
    },
    /// Checks a Bitcoin PSBT bundle against the keystore and the pinned wallet, shows it, asks for confirmation,
    /// adds this cosigner's signatures.
    SignPsbt {
        #[arg(long)]
        keystore: PathBuf,
        #[arg(long = "share", required = true)]
        shares: Vec<PathBuf>,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks a signed file against its unsigned bundle, as the online side does.
    Verify {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        signed: PathBuf,
    },
}

/// The only clock read in this program; everything below takes `now_ms`.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn parse_native(text: &str, chain_id: u64) -> Result<AssetSpec> {
    let (code, decimals) = text.split_once(':').ok_or_else(|| anyhow!("--native: expected CODE:DECIMALS"))?;
    Ok(AssetSpec {
        code: code.parse().map_err(|e| anyhow!("--native code: {e}"))?,
        kind: AssetKind::EvmNative { chain_id: ChainId(chain_id) },
        decimals: decimals.parse().context("--native decimals")?,
    })
}

fn parse_token(text: &str, chain_id: u64) -> Result<AssetSpec> {
    let (code, rest) = text.split_once('=').ok_or_else(|| anyhow!("--token: expected CODE=0xCONTRACT:DECIMALS"))?;
    let (contract, decimals) =
        rest.split_once(':').ok_or_else(|| anyhow!("--token: expected CODE=0xCONTRACT:DECIMALS"))?;
    let address: alloy_primitives::Address = contract.parse().context("--token contract")?;
    Ok(AssetSpec {
        code: code.parse().map_err(|e| anyhow!("--token code: {e}"))?,
        kind: AssetKind::Erc20 { chain_id: ChainId(chain_id), contract: format!("{address:#x}") },
        decimals: decimals.parse().context("--token decimals")?,
    })
}

fn passphrase_for(custodian: &str, purpose: &str) -> Result<Zeroizing<String>> {
    let var = keystore::passphrase_env(custodian);
    if let Ok(p) = std::env::var(&var) {
        return Ok(Zeroizing::new(p));
    }
    let p = rpassword::prompt_password(format!("Passphrase for {custodian}'s share ({purpose}): "))
        .with_context(|| format!("reading the passphrase (or set {var})"))?;
    Ok(Zeroizing::new(p))
}

fn keygen(cmd: Command) -> Result<()> {
    let Command::Keygen {
        out,
        key_id,
        custodians,
        threshold,
        registry,
        quorum,
        chain_id,
        native,
        tokens,
        fee_wei_max,
        protect_shares,
        show_mnemonic,
    } = cmd
    else {
        unreachable!("called for keygen only")
    };
    let keystore_path = out.join(KEYSTORE_FILE);
    if keystore_path.exists() {
        bail!(
            "{} exists: a keystore is never overwritten (it may hold the only wrapped copy of a seed)",
            keystore_path.display()
        );
    }
    let log_bytes = std::fs::read(&registry).with_context(|| format!("reading {}", registry.display()))?;
    let registry_log: Vec<LoggedChange> =
        serde_json::from_slice(&log_bytes).with_context(|| format!("{} is not a registry log", registry.display()))?;
    let mut assets = vec![parse_native(&native, chain_id)?];
    for t in &tokens {
        assets.push(parse_token(t, chain_id)?);
    }
    let generated = keystore::generate(KeygenParams {
        key_id,
        custodians,
        threshold,
        chain_id,
        assets,
        fee_wei_max,
        quorum,
        registry_log,
        now_ms: now_ms(),
    })?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for share in &generated.shares {
        let passphrase = if protect_shares { Some(passphrase_for(&share.custodian, "new")?) } else { None };
        let file = share.to_file(passphrase.as_deref().map(|p| p.as_str()))?;
        let path = out.join(format!("share-{}.json", share.custodian));
        file.write(&path).with_context(|| format!("writing {}", path.display()))?;
        println!("share for {}: {}", share.custodian, path.display());
    }
    generated.keystore.write(&keystore_path)?;
    if show_mnemonic {
        eprintln!("Seed words (write them down now; they are not shown again):\n{}", generated.mnemonic.as_str());
    }
    println!("keystore: {}", keystore_path.display());
    println!("key id:   {}", generated.keystore.key_id);
    println!("address:  {}", generated.keystore.address);
    println!("xpub:     {}  ({})", generated.keystore.account_xpub, keystore::COLD_ACCOUNT_PATH);
    Ok(())
}

fn read_shares(paths: &[PathBuf]) -> Result<Vec<RawShare>> {
    if paths.len() > SHARES_MAX {
        bail!("--share given {} times, at most {SHARES_MAX}", paths.len());
    }
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let file = kinko_keys::shares::ShareFile::read(path).with_context(|| format!("share {}", path.display()))?;
        let passphrase = if file.is_protected() { Some(passphrase_for(&file.custodian, "unseal")?) } else { None };
        out.push(
            file.open(passphrase.as_deref().map(|p| p.as_str()))
                .with_context(|| format!("share {}", path.display()))?,
        );
    }
    Ok(out)
}

/// Reads one line from stdin (bounded) and accepts exactly [`CONFIRMATION_WORD`].
fn confirmed() -> Result<bool> {
    eprint!("Type '{CONFIRMATION_WORD}' to sign: ");
    let mut line = String::new();
    std::io::stdin().lock().take(CONFIRMATION_LINE_LEN_MAX).read_line(&mut line).context("reading the confirmation")?;
    Ok(line.trim() == CONFIRMATION_WORD)
}

fn sign_cmd(keystore_path: &Path, share_paths: &[PathBuf], bundle_path: &Path, out: &Path) -> Result<()> {
    let mut ks = Keystore::read(keystore_path)?;
    let record_path = Keystore::record_path(keystore_path);
    let mut record = SignRecord::read(&record_path)?;
    let unsigned = read_unsigned(bundle_path)?;
    let now_ms = now_ms();
    let review = sign::review(&ks, &record, unsigned, now_ms).context("bundle refused")?;
    println!("{}", review.summary);
    if !confirmed()? {
        bail!("not confirmed: nothing signed");
    }
    let shares = read_shares(share_paths)?;
    let signed = sign::sign(&mut ks, keystore_path, &mut record, &review, &shares, now_ms)?;
    drop(shares);
    write_json_0600(out, &signed)?;
    println!("signed: {}  tx {}", out.display(), signed.tx_hash);
    Ok(())
}

/// Bound on the cosigner files one `btc-wallet` takes.
const COSIGNER_FILES_MAX: usize = kinko_keys::btc::MULTISIG_COSIGNERS_MAX;

fn btc_cosigner_cmd(
    keystore_path: &Path,
    share_paths: &[PathBuf],
    network: bitcoin::Network,
    out: Option<&Path>,
) -> Result<()> {
    let ks = Keystore::read(keystore_path)?;
    let shares = read_shares(share_paths)?;
    let key = psbt_bundle::cosigner_key(&ks, &shares, network)?;
    drop(shares);
    let json = serde_json::to_string_pretty(&key.cosigner)?;
    if let Some(out) = out {
        write_json_0600(out, &key.cosigner)?;
    }
    println!("{json}");
    Ok(())
}

fn btc_wallet_cmd(
    keystore_path: &Path,
    network: bitcoin::Network,
    threshold: usize,
    cosigner_paths: &[PathBuf],
    fee_sat_max: u64,
) -> Result<()> {
    Keystore::read(keystore_path)?;
    if cosigner_paths.len() > COSIGNER_FILES_MAX {
        bail!("--cosigner given {} times, at most {COSIGNER_FILES_MAX}", cosigner_paths.len());
    }
    let mut cosigners = Vec::with_capacity(cosigner_paths.len());
    for path in cosigner_paths {
        let bytes = kinko_offline::bundle::read_bounded(path)?;
        let c: kinko_keys::btc::Cosigner =
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not a cosigner file", path.display()))?;
        cosigners.push(c);
    }
    let pinned = psbt_bundle::PinnedBtcWallet {
        kind: psbt_bundle::BTC_WALLET_KIND.into(),
        network,
        threshold,
        cosigners,
        fee_sat_max,
    };
    let wallet = pinned.wallet()?;
    let path = psbt_bundle::PinnedBtcWallet::path_for(keystore_path);
    pinned.write_new(&path)?;
    println!("pinned: {}", path.display());
    println!("receive descriptor: {}", wallet.descriptor(kinko_keys::btc::Keychain::Receive));
    println!("first address:      {}", wallet.address(kinko_keys::btc::Keychain::Receive, 0)?);
    Ok(())
}

fn sign_psbt_cmd(keystore_path: &Path, share_paths: &[PathBuf], bundle_path: &Path, out: &Path) -> Result<()> {
    let mut ks = Keystore::read(keystore_path)?;
    let pinned = psbt_bundle::PinnedBtcWallet::read(&psbt_bundle::PinnedBtcWallet::path_for(keystore_path))
        .context("no pinned Bitcoin wallet (kinko-offline btc-wallet)")?;
    let record_path = Keystore::record_path(keystore_path);
    let mut record = SignRecord::read(&record_path)?;
    let unsigned = psbt_bundle::read_unsigned_psbt(bundle_path)?;
    let now_ms = now_ms();
    let review = psbt_bundle::review_psbt(&ks, &record, &pinned, unsigned, now_ms).context("bundle refused")?;
    println!("{}", review.summary);
    if !confirmed()? {
        bail!("not confirmed: nothing signed");
    }
    let shares = read_shares(share_paths)?;
    let signed = psbt_bundle::sign_psbt(&mut ks, keystore_path, &mut record, &pinned, &review, &shares, now_ms)?;
    drop(shares);
    write_json_0600(out, &signed)?;
    println!("signed: {}  txid {}", out.display(), signed.txid);
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        cmd @ Command::Keygen { .. } => keygen(cmd),
        Command::Sign { keystore, shares, bundle, out } => sign_cmd(&keystore, &shares, &bundle, &out),
        Command::Show { bundle } => {
            let b = read_unsigned(&bundle)?;
            print!("{}", sign::show(&b)?);
            Ok(())
        }
        Command::PaperBackup(args) => {
            Ok(kinko_offline::paper::run_backup(&args, std::io::stdin().lock(), &mut std::io::stdout().lock())?)
        }
        Command::PaperRestore(args) => {
            Ok(kinko_offline::paper::run_restore(&args, std::io::stdin().lock(), &mut std::io::stdout().lock())?)
        }
        Command::QrEncode { file, out_dir } => {
            let paths = kinko_offline::qr::write_frames(&file, &out_dir)?;
            println!("{} frames in {}", paths.len(), out_dir.display());
            Ok(())
        }
        Command::QrDecode { frames, out } => {
            let text = String::from_utf8(kinko_offline::bundle::read_bounded(&frames)?)
                .with_context(|| format!("{} is not text", frames.display()))?;
            let lines: Vec<&str> = text.lines().collect();
            let bytes = kinko_offline::qr::reassemble(&lines)?;
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).context("the reassembled frames are not a JSON bundle")?;
            write_json_0600(&out, &value)?;
            println!("{} bytes reassembled into {}", bytes.len(), out.display());
            Ok(())
        }
        Command::BtcCosigner { keystore, shares, network, out } => {
            btc_cosigner_cmd(&keystore, &shares, network, out.as_deref())
        }
        Command::BtcWallet { keystore, network, threshold, cosigners, fee_sat_max } => {
            btc_wallet_cmd(&keystore, network, threshold, &cosigners, fee_sat_max)
        }
        Command::SignPsbt { keystore, shares, bundle, out } => sign_psbt_cmd(&keystore, &shares, &bundle, &out),
        Command::Verify { bundle, signed } => {
            let unsigned = read_unsigned(&bundle)?;
            let signed = read_signed(&signed)?;
            let v = verify_signed(&unsigned, &signed)?;
            println!("signed file verifies: tx {} nonce {}", v.tx_hash, v.nonce);
            Ok(())
        }
    }
}
