//! Paper backup of a cold seed (K17): Shamir shares printed as SVG pages with QR codes, restored to the
//! same account xpub. Real parts throughout: the real Shamir split, the real BIP32 derivation, the SVG
//! files as written, their QR codes read back by a real QR decoder (rqrr), and the `kinko-offline` binary.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kinko_keys::hd;
use kinko_keys::seed::MasterSeed;
use kinko_offline::keystore::Keystore;
use kinko_offline::paper::{self, PaperError};
use support::registry_log;

/// The account xpub of a mnemonic, derived here the way the key system does, independently of paper.rs.
fn cold_xpub(words: &str) -> String {
    let seed = MasterSeed::from_mnemonic(words).unwrap();
    hd::evm_deposit_xpub(&seed.to_bip32_master().unwrap()).unwrap().to_string()
}

fn texts_of(b: &paper::PaperBackup, indexes: &[u8]) -> Vec<String> {
    indexes.iter().map(|i| b.shares[usize::from(*i) - 1].to_text().to_string()).collect()
}

#[test]
fn k17_paper_backup_restores_to_the_same_xpub() {
    let (_seed, words) = MasterSeed::generate();
    let expected = cold_xpub(&words);
    let backup = paper::backup(&words, 2, 3).unwrap();
    assert_eq!(backup.account_xpub, expected);
    assert_eq!(backup.shares.len(), 3);
    for subset in [[1u8, 3], [2, 3], [3, 1], [1, 2]] {
        let restored = paper::restore(&texts_of(&backup, &subset)).unwrap();
        assert_eq!(restored.account_xpub, expected, "shares {subset:?}");
        assert_eq!(*restored.mnemonic, *words, "shares {subset:?}");
        assert_eq!(restored.set_id, backup.set_id);
    }
    // One share alone restores nothing.
    assert!(matches!(
        paper::restore(&texts_of(&backup, &[2])),
        Err(PaperError::NotEnoughShares { have: 1, need: 2, total: 3, .. })
    ));

    // And from the printed pages themselves: the text form read back from each SVG file.
    let dir = tempfile::tempdir().unwrap();
    let pages = paper::write_pages(&backup, dir.path()).unwrap();
    assert_eq!(pages.len(), 3);
    for subset in [[0usize, 2], [1, 2]] {
        let texts: Vec<_> = subset.iter().map(|i| paper::read_share_file(&pages[*i]).unwrap()).collect();
        let texts: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
        assert_eq!(paper::restore(&texts).unwrap().account_xpub, expected);
    }
}

#[test]
fn k17_paper_share_qr_decodes_to_its_text() {
    let (_seed, words) = MasterSeed::generate();
    let backup = paper::backup(&words, 2, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pages = paper::write_pages(&backup, dir.path()).unwrap();
    for (share, page) in backup.shares.iter().zip(&pages) {
        let svg = std::fs::read_to_string(page).unwrap();
        let text = share.to_text();
        // The QR code as drawn in the file, rasterised and read by a real decoder.
        assert_eq!(decode_svg_qr(&svg), *text, "{}", page.display());
        // The text form is on the page (in groups), with the facts a custodian checks.
        let printed: String = share.text_lines().iter().map(|l| l.replace(' ', "")).collect();
        assert_eq!(printed, *text);
        for line in share.text_lines() {
            assert!(svg.contains(line.as_str()), "line {:?} not on the page", *line);
        }
        assert!(svg.contains(&format!("SHARE {} OF 3: ANY 2 RESTORE", share.index)));
        assert!(svg.contains(&format!("Set {}", backup.set_id)));
        assert!(svg.contains(&backup.account_fingerprint));
        assert!(svg.contains(&backup.account_xpub[..56]));
        assert!(svg.contains("SECRET."));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(page).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
    // Pages are never overwritten.
    assert!(matches!(paper::write_pages(&backup, dir.path()), Err(PaperError::Io { .. })));
}

#[test]
fn k17_paper_restore_refuses_wrong_set_tampered_checksum_duplicates_and_too_few_shares() {
    let (_a, words_a) = MasterSeed::generate();
    let (_b, words_b) = MasterSeed::generate();
    let a = paper::backup(&words_a, 2, 3).unwrap();
    let b = paper::backup(&words_b, 2, 3).unwrap();

    // A share of another seed's set, named by its position and index.
    let mixed = [a.shares[0].to_text().to_string(), b.shares[1].to_text().to_string()];
    let e = paper::restore(&mixed).unwrap_err();
    assert!(matches!(e, PaperError::WrongSet { position: 2, index: 2, .. }), "{e}");
    assert!(e.to_string().contains(&b.set_id) && e.to_string().contains(&a.set_id), "{e}");

    // One changed payload character: caught by that share's checksum, before any combination.
    let mut tampered = a.shares[2].to_text().to_string();
    let at = tampered.len() - 20;
    let swapped = if &tampered[at..=at] == "7" { "8" } else { "7" };
    tampered.replace_range(at..=at, swapped);
    let e = paper::restore(&[a.shares[0].to_text().to_string(), tampered]).unwrap_err();
    assert!(matches!(e, PaperError::Share { position: 2, .. }), "{e}");
    assert!(e.to_string().starts_with("share 2: checksum does not match"), "{e}");

    // The same sheet twice.
    let twice = [a.shares[1].to_text().to_string(), a.shares[1].to_text().to_string()];
    let e = paper::restore(&twice).unwrap_err();
    assert!(matches!(e, PaperError::DuplicateIndex { position: 2, index: 2, first: 1 }), "{e}");

    // Fewer than K.
    let e = paper::restore(&[a.shares[2].to_text().to_string()]).unwrap_err();
    assert_eq!(e.to_string(), format!("not enough shares of set {}: 1 given, any 2 of the 3 are needed", a.set_id));
    let none: [&str; 0] = [];
    assert!(paper::restore(&none).is_err());

    // Not a share at all.
    let e = paper::restore(&["bitcoin:1BoatSLRHtKNngkdXEeobR76b53LETtpyT"]).unwrap_err();
    assert!(e.to_string().starts_with("share 1: is not a kinko paper share"), "{e}");
}

#[test]
fn k17_paper_cli_backs_up_from_stdin_and_restores_from_the_pages() {
    let (_seed, words) = MasterSeed::generate();
    let expected = cold_xpub(&words);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("paper");

    let mut child = Command::new(env!("CARGO_BIN_EXE_kinko-offline"))
        .args(["paper-backup", "--mnemonic-stdin", "--threshold", "2", "--shares", "3", "--out"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{}\n", *words).as_bytes()).unwrap();
    let run = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains(&expected), "{stdout}");
    let first_words: Vec<&str> = words.split(' ').take(3).collect();
    assert!(!stdout.contains(&*words) && !stdout.contains(&first_words.join(" ")), "{stdout}");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    assert_eq!(pages.len(), 3);

    let restore = |files: &[&Path]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinko-offline"));
        cmd.arg("paper-restore");
        for f in files {
            cmd.arg("--share-file").arg(f);
        }
        cmd.output().unwrap()
    };
    let ok = restore(&[&pages[0], &pages[2]]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(!stdout.contains(&*words), "the mnemonic is not printed unless asked for");

    let too_few = restore(&[&pages[1]]);
    assert!(!too_few.status.success());
    let stderr = String::from_utf8_lossy(&too_few.stderr);
    assert!(stderr.contains("not enough shares"), "{stderr}");

    // The mnemonic, when asked for, goes to a new 0600 file and matches.
    let mnemonic_file = dir.path().join("restored-mnemonic");
    let to_file = Command::new(env!("CARGO_BIN_EXE_kinko-offline"))
        .arg("paper-restore")
        .arg("--share-file")
        .arg(&pages[1])
        .arg("--share-file")
        .arg(&pages[2])
        .arg("--mnemonic-out")
        .arg(&mnemonic_file)
        .output()
        .unwrap();
    assert!(to_file.status.success(), "{}", String::from_utf8_lossy(&to_file.stderr));
    assert_eq!(std::fs::read_to_string(&mnemonic_file).unwrap().trim(), *words);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&mnemonic_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn k17_paper_backup_of_a_keygen_cold_seed_restores_to_the_keystores_xpub() {
    let dir = tempfile::tempdir().unwrap();
    let now_ms = support::now_ms();
    let registry = dir.path().join("registry.json");
    std::fs::write(&registry, serde_json::to_vec(&registry_log(now_ms - 60_000)).unwrap()).unwrap();
    let keys = dir.path().join("keys");
    let keygen = Command::new(env!("CARGO_BIN_EXE_kinko-offline"))
        .args(["keygen", "--out"])
        .arg(&keys)
        .args(["--custodian", "alice", "--custodian", "bob", "--threshold", "2", "--registry"])
        .arg(&registry)
        .args(["--quorum", "1", "--chain-id", "31337", "--show-mnemonic"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&keygen.stderr);
    assert!(keygen.status.success(), "keygen: {stderr}");
    // The words keygen shows once are the input of the paper backup.
    let words = stderr.lines().rev().find(|l| l.split(' ').count() == 24).expect("24 seed words on stderr");
    let keystore_path = keys.join("keystore.json");
    let keystore = Keystore::read(&keystore_path).unwrap();

    let paper_dir = dir.path().join("paper");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kinko-offline"))
        .args(["paper-backup", "--mnemonic-stdin", "--threshold", "2", "--shares", "3", "--out"])
        .arg(&paper_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(words.as_bytes()).unwrap();
    let backup = child.wait_with_output().unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    assert!(String::from_utf8_lossy(&backup.stdout).contains(&keystore.account_xpub));
    let page =
        |i: u8| paper_dir.join(format!("kinko-paper-{}-share-{i}-of-3.svg", paper::set_id_of(&keystore.account_xpub)));

    for (a, b) in [(1, 3), (2, 3)] {
        let restore = Command::new(env!("CARGO_BIN_EXE_kinko-offline"))
            .args(["paper-restore", "--keystore"])
            .arg(&keystore_path)
            .arg("--share-file")
            .arg(page(a))
            .arg("--share-file")
            .arg(page(b))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&restore.stdout);
        assert!(restore.status.success(), "{stdout}{}", String::from_utf8_lossy(&restore.stderr));
        assert!(stdout.contains(&keystore.account_xpub), "{stdout}");
    }
    // Another seed's sheets do not pass for this keystore.
    let (_other, other_words) = MasterSeed::generate();
    let other = paper::backup(&other_words, 2, 3).unwrap();
    let other_dir = dir.path().join("other");
    let pages = paper::write_pages(&other, &other_dir).unwrap();
    let wrong = Command::new(env!("CARGO_BIN_EXE_kinko-offline"))
        .args(["paper-restore", "--keystore"])
        .arg(&keystore_path)
        .arg("--share-file")
        .arg(&pages[0])
        .arg("--share-file")
        .arg(&pages[1])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("expect-xpub") && stderr.contains(&keystore.account_xpub), "{stderr}");
}

/// Reads the QR code drawn in a page: the renderer's path of `M{x} {y}h{w}v{h}H{x}V{y}` rectangles,
/// painted onto a white greyscale canvas the size of the QR block, then decoded by rqrr.
fn decode_svg_qr(page: &str) -> String {
    let nested = &page[page.find("<g transform=\"translate(").unwrap()..];
    let nested = &nested[nested.find("<svg").unwrap()..];
    let attr = |name: &str| -> usize {
        let at = nested.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        nested[at..at + nested[at..].find('"').unwrap()].parse().unwrap()
    };
    let (w, h) = (attr("width"), attr("height"));
    let d_at = nested.find(" d=\"").unwrap() + 4;
    let d = &nested[d_at..d_at + nested[d_at..].find('"').unwrap()];
    let mut pixels = vec![255u8; w * h];
    for rect in d.split('M').filter(|r| !r.is_empty()) {
        let nums: Vec<usize> =
            rect.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
        let (left, top, rw, rh) = (nums[0], nums[1], nums[2], nums[3]);
        for y in top..top + rh {
            for x in left..left + rw {
                pixels[y * w + x] = 0;
            }
        }
    }
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "exactly one QR code on the page");
    grids[0].decode().unwrap().1
}
