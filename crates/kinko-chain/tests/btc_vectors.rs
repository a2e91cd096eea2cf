//! Official Bitcoin test vectors (issue 9): BIP32, BIP39, BIP84, BIP143, BIP174 — run through the code
//! kinko uses (rust-bitcoin, bip39, `kinko_keys::btc`, `kinko_chain::btc`) — and the withdrawal PSBT
//! pipeline end to end: built by `btc::psbt`, signed with rust-bitcoin, finalized, extracted and verified
//! by libbitcoinconsensus (`btc::consensus`).
//!
//! The vectors are copied from the BIPs (via rust-bitcoin's, the `bip39` crate's and the Trezor
//! `python-mnemonic` vectors file, which carry them verbatim). No network access is needed.

use std::collections::BTreeMap;
use std::str::FromStr;

use bitcoin::bip32::{DerivationPath, Fingerprint, Xpriv, Xpub};
use bitcoin::consensus::encode::{deserialize, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::script::{Builder, PushBytes};
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    Address, Amount, Network, NetworkKind, OutPoint, PrivateKey, PublicKey, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Txid, Witness, absolute, transaction,
};
use kinko_chain::btc::consensus::{ConsensusError, prevouts_of, verify_spend};
use kinko_chain::btc::psbt::{
    BuiltPsbt, MAX_INPUTS, PsbtBuildError, RBF_SEQUENCE, SpendableUtxo, WithdrawalRequest, build_fee_bump,
    build_withdrawal, finalize_p2wpkh,
};
use kinko_keys::btc::{Bip84Account, Keychain, account_xpub, change_address, is_own_change, receive_address};
use kinko_keys::seed::MasterSeed;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test vector hex")
}

/// BIP174 "Test Vectors": invalid PSBTs, as carried by rust-bitcoin 0.32 (`psbt::tests::bip_vectors`), with
/// the reason the BIP gives for each.
const BIP174_INVALID: [(&str, &str); 5] = [
    (
        "network transaction, not PSBT format",
        "0200000001268171371edff285e937adeea4b37b78000c0566cbb3ad64641713ca42171bf6000000006a473044022070b2245123e6bf474d60c5b50c043d4c691a5d2435f09a34a7662a9dc251790a022001329ca9dacf280bdf30740ec0390422422c81cb45839457aeb76fc12edd95b3012102657d118d3357b8e0f4c2cd46db7b39f6d9c38d9a70abcb9b2de5dc8dbfe4ce31feffffff02d3dff505000000001976a914d0c59903c5bac2868760e90fd521a4665aa7652088ac00e1f5050000000017a9143545e6e33b832c47050f24d3eeb93c9c03948bc787b32e1300",
    ),
    (
        "PSBT missing outputs",
        "70736274ff0100750200000001268171371edff285e937adeea4b37b78000c0566cbb3ad64641713ca42171bf60000000000feffffff02d3dff505000000001976a914d0c59903c5bac2868760e90fd521a4665aa7652088ac00e1f5050000000017a9143545e6e33b832c47050f24d3eeb93c9c03948bc787b32e1300000100fda5010100000000010289a3c71eab4d20e0371bbba4cc698fa295c9463afa2e397f8533ccb62f9567e50100000017160014be18d152a9b012039daf3da7de4f53349eecb985ffffffff86f8aa43a71dff1448893a530a7237ef6b4608bbb2dd2d0171e63aec6a4890b40100000017160014fe3e9ef1a745e974d902c4355943abcb34bd5353ffffffff0200c2eb0b000000001976a91485cff1097fd9e008bb34af709c62197b38978a4888ac72fef84e2c00000017a914339725ba21efd62ac753a9bcd067d6c7a6a39d05870247304402202712be22e0270f394f568311dc7ca9a68970b8025fdd3b240229f07f8a5f3a240220018b38d7dcd314e734c9276bd6fb40f673325bc4baa144c800d2f2f02db2765c012103d2e15674941bad4a996372cb87e1856d3652606d98562fe39c5e9e7e413f210502483045022100d12b852d85dcd961d2f5f4ab660654df6eedcc794c0c33ce5cc309ffb5fce58d022067338a8e0e1725c197fb1a88af59f51e44e4255b20167c8684031c05d1f2592a01210223b72beef0965d10be0778efecd61fcac6f79a4ea169393380734464f84f2ab30000000000",
    ),
    (
        "unsigned tx has a non-empty scriptSig",
        "70736274ff0100fd0a010200000002ab0949a08c5af7c49b8212f417e2f15ab3f5c33dcf153821a8139f877a5b7be4000000006a47304402204759661797c01b036b25928948686218347d89864b719e1f7fcf57d1e511658702205309eabf56aa4d8891ffd111fdf1336f3a29da866d7f8486d75546ceedaf93190121035cdc61fc7ba971c0b501a646a2a83b102cb43881217ca682dc86e2d73fa88292feffffffab0949a08c5af7c49b8212f417e2f15ab3f5c33dcf153821a8139f877a5b7be40100000000feffffff02603bea0b000000001976a914768a40bbd740cbe81d988e71de2a4d5c71396b1d88ac8e240000000000001976a9146f4620b553fa095e721b9ee0efe9fa039cca459788ac00000000000001012000e1f5050000000017a9143545e6e33b832c47050f24d3eeb93c9c03948bc787010416001485d13537f2e265405a34dbafa9e3dda01fb82308000000",
    ),
    (
        "PSBT with no unsigned tx",
        "70736274ff000100fda5010100000000010289a3c71eab4d20e0371bbba4cc698fa295c9463afa2e397f8533ccb62f9567e50100000017160014be18d152a9b012039daf3da7de4f53349eecb985ffffffff86f8aa43a71dff1448893a530a7237ef6b4608bbb2dd2d0171e63aec6a4890b40100000017160014fe3e9ef1a745e974d902c4355943abcb34bd5353ffffffff0200c2eb0b000000001976a91485cff1097fd9e008bb34af709c62197b38978a4888ac72fef84e2c00000017a914339725ba21efd62ac753a9bcd067d6c7a6a39d05870247304402202712be22e0270f394f568311dc7ca9a68970b8025fdd3b240229f07f8a5f3a240220018b38d7dcd314e734c9276bd6fb40f673325bc4baa144c800d2f2f02db2765c012103d2e15674941bad4a996372cb87e1856d3652606d98562fe39c5e9e7e413f210502483045022100d12b852d85dcd961d2f5f4ab660654df6eedcc794c0c33ce5cc309ffb5fce58d022067338a8e0e1725c197fb1a88af59f51e44e4255b20167c8684031c05d1f2592a01210223b72beef0965d10be0778efecd61fcac6f79a4ea169393380734464f84f2ab30000000000",
    ),
    (
        "PSBT with duplicate keys in an input",
        "70736274ff0100750200000001268171371edff285e937adeea4b37b78000c0566cbb3ad64641713ca42171bf60000000000feffffff02d3dff505000000001976a914d0c59903c5bac2868760e90fd521a4665aa7652088ac00e1f5050000000017a9143545e6e33b832c47050f24d3eeb93c9c03948bc787b32e1300000100fda5010100000000010289a3c71eab4d20e0371bbba4cc698fa295c9463afa2e397f8533ccb62f9567e50100000017160014be18d152a9b012039daf3da7de4f53349eecb985ffffffff86f8aa43a71dff1448893a530a7237ef6b4608bbb2dd2d0171e63aec6a4890b40100000017160014fe3e9ef1a745e974d902c4355943abcb34bd5353ffffffff0200c2eb0b000000001976a91485cff1097fd9e008bb34af709c62197b38978a4888ac72fef84e2c00000017a914339725ba21efd62ac753a9bcd067d6c7a6a39d05870247304402202712be22e0270f394f568311dc7ca9a68970b8025fdd3b240229f07f8a5f3a240220018b38d7dcd314e734c9276bd6fb40f673325bc4baa144c800d2f2f02db2765c012103d2e15674941bad4a996372cb87e1856d3652606d98562fe39c5e9e7e413f210502483045022100d12b852d85dcd961d2f5f4ab660654df6eedcc794c0c33ce5cc309ffb5fce58d022067338a8e0e1725c197fb1a88af59f51e44e4255b20167c8684031c05d1f2592a01210223b72beef0965d10be0778efecd61fcac6f79a4ea169393380734464f84f2ab30000000001003f0200000001ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff0000000000ffffffff010000000000000000036a010000000000000000",
    ),
];
/// BIP174 "Test Vectors": valid PSBTs (1 to 5), as carried by rust-bitcoin 0.32.
const BIP174_VALID: [&str; 5] = [
    "70736274ff0100750200000001268171371edff285e937adeea4b37b78000c0566cbb3ad64641713ca42171bf60000000000feffffff02d3dff505000000001976a914d0c59903c5bac2868760e90fd521a4665aa7652088ac00e1f5050000000017a9143545e6e33b832c47050f24d3eeb93c9c03948bc787b32e1300000100fda5010100000000010289a3c71eab4d20e0371bbba4cc698fa295c9463afa2e397f8533ccb62f9567e50100000017160014be18d152a9b012039daf3da7de4f53349eecb985ffffffff86f8aa43a71dff1448893a530a7237ef6b4608bbb2dd2d0171e63aec6a4890b40100000017160014fe3e9ef1a745e974d902c4355943abcb34bd5353ffffffff0200c2eb0b000000001976a91485cff1097fd9e008bb34af709c62197b38978a4888ac72fef84e2c00000017a914339725ba21efd62ac753a9bcd067d6c7a6a39d05870247304402202712be22e0270f394f568311dc7ca9a68970b8025fdd3b240229f07f8a5f3a240220018b38d7dcd314e734c9276bd6fb40f673325bc4baa144c800d2f2f02db2765c012103d2e15674941bad4a996372cb87e1856d3652606d98562fe39c5e9e7e413f210502483045022100d12b852d85dcd961d2f5f4ab660654df6eedcc794c0c33ce5cc309ffb5fce58d022067338a8e0e1725c197fb1a88af59f51e44e4255b20167c8684031c05d1f2592a01210223b72beef0965d10be0778efecd61fcac6f79a4ea169393380734464f84f2ab300000000000000",
    "70736274ff0100a00200000002ab0949a08c5af7c49b8212f417e2f15ab3f5c33dcf153821a8139f877a5b7be40000000000feffffffab0949a08c5af7c49b8212f417e2f15ab3f5c33dcf153821a8139f877a5b7be40100000000feffffff02603bea0b000000001976a914768a40bbd740cbe81d988e71de2a4d5c71396b1d88ac8e240000000000001976a9146f4620b553fa095e721b9ee0efe9fa039cca459788ac000000000001076a47304402204759661797c01b036b25928948686218347d89864b719e1f7fcf57d1e511658702205309eabf56aa4d8891ffd111fdf1336f3a29da866d7f8486d75546ceedaf93190121035cdc61fc7ba971c0b501a646a2a83b102cb43881217ca682dc86e2d73fa882920001012000e1f5050000000017a9143545e6e33b832c47050f24d3eeb93c9c03948bc787010416001485d13537f2e265405a34dbafa9e3dda01fb82308000000",
    "70736274ff0100750200000001268171371edff285e937adeea4b37b78000c0566cbb3ad64641713ca42171bf60000000000feffffff02d3dff505000000001976a914d0c59903c5bac2868760e90fd521a4665aa7652088ac00e1f5050000000017a9143545e6e33b832c47050f24d3eeb93c9c03948bc787b32e1300000100fda5010100000000010289a3c71eab4d20e0371bbba4cc698fa295c9463afa2e397f8533ccb62f9567e50100000017160014be18d152a9b012039daf3da7de4f53349eecb985ffffffff86f8aa43a71dff1448893a530a7237ef6b4608bbb2dd2d0171e63aec6a4890b40100000017160014fe3e9ef1a745e974d902c4355943abcb34bd5353ffffffff0200c2eb0b000000001976a91485cff1097fd9e008bb34af709c62197b38978a4888ac72fef84e2c00000017a914339725ba21efd62ac753a9bcd067d6c7a6a39d05870247304402202712be22e0270f394f568311dc7ca9a68970b8025fdd3b240229f07f8a5f3a240220018b38d7dcd314e734c9276bd6fb40f673325bc4baa144c800d2f2f02db2765c012103d2e15674941bad4a996372cb87e1856d3652606d98562fe39c5e9e7e413f210502483045022100d12b852d85dcd961d2f5f4ab660654df6eedcc794c0c33ce5cc309ffb5fce58d022067338a8e0e1725c197fb1a88af59f51e44e4255b20167c8684031c05d1f2592a01210223b72beef0965d10be0778efecd61fcac6f79a4ea169393380734464f84f2ab30000000001030401000000000000",
    "70736274ff0100a00200000002ab0949a08c5af7c49b8212f417e2f15ab3f5c33dcf153821a8139f877a5b7be40000000000feffffffab0949a08c5af7c49b8212f417e2f15ab3f5c33dcf153821a8139f877a5b7be40100000000feffffff02603bea0b000000001976a914768a40bbd740cbe81d988e71de2a4d5c71396b1d88ac8e240000000000001976a9146f4620b553fa095e721b9ee0efe9fa039cca459788ac00000000000100df0200000001268171371edff285e937adeea4b37b78000c0566cbb3ad64641713ca42171bf6000000006a473044022070b2245123e6bf474d60c5b50c043d4c691a5d2435f09a34a7662a9dc251790a022001329ca9dacf280bdf30740ec0390422422c81cb45839457aeb76fc12edd95b3012102657d118d3357b8e0f4c2cd46db7b39f6d9c38d9a70abcb9b2de5dc8dbfe4ce31feffffff02d3dff505000000001976a914d0c59903c5bac2868760e90fd521a4665aa7652088ac00e1f5050000000017a9143545e6e33b832c47050f24d3eeb93c9c03948bc787b32e13000001012000e1f5050000000017a9143545e6e33b832c47050f24d3eeb93c9c03948bc787010416001485d13537f2e265405a34dbafa9e3dda01fb8230800220202ead596687ca806043edc3de116cdf29d5e9257c196cd055cf698c8d02bf24e9910b4a6ba670000008000000080020000800022020394f62be9df19952c5587768aeb7698061ad2c4a25c894f47d8c162b4d7213d0510b4a6ba6700000080010000800200008000",
    "70736274ff0100550200000001279a2323a5dfb51fc45f220fa58b0fc13e1e3342792a85d7e36cd6333b5cbc390000000000ffffffff01a05aea0b000000001976a914ffe9c0061097cc3b636f2cb0460fa4fc427d2b4588ac0000000000010120955eea0b0000000017a9146345200f68d189e1adc0df1c4d16ea8f14c0dbeb87220203b1341ccba7683b6af4f1238cd6e97e7167d569fac47f1e48d47541844355bd4646304302200424b58effaaa694e1559ea5c93bbfd4a89064224055cdf070b6771469442d07021f5c8eb0fea6516d60b8acb33ad64ede60e8785bfb3aa94b99bdf86151db9a9a010104220020771fd18ad459666dd49f3d564e3dbc42f4c84774e360ada16816a8ed488d5681010547522103b1341ccba7683b6af4f1238cd6e97e7167d569fac47f1e48d47541844355bd462103de55d1e1dac805e3f8a58c1fbf9b94c02f3dbaafe127fefca4995f26f82083bd52ae220603b1341ccba7683b6af4f1238cd6e97e7167d569fac47f1e48d47541844355bd4610b4a6ba67000000800000008004000080220603de55d1e1dac805e3f8a58c1fbf9b94c02f3dbaafe127fefca4995f26f82083bd10b4a6ba670000008000000080050000800000",
];
/// BIP32 test vector 1: seed, then every chain level (path, xprv, xpub).
const BIP32_VECTOR_1_SEED: &str = "000102030405060708090a0b0c0d0e0f";
const BIP32_VECTOR_1: [(&str, &str, &str); 6] = [
    (
        "m",
        "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi",
        "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8",
    ),
    (
        "m/0h",
        "xprv9uHRZZhk6KAJC1avXpDAp4MDc3sQKNxDiPvvkX8Br5ngLNv1TxvUxt4cV1rGL5hj6KCesnDYUhd7oWgT11eZG7XnxHrnYeSvkzY7d2bhkJ7",
        "xpub68Gmy5EdvgibQVfPdqkBBCHxA5htiqg55crXYuXoQRKfDBFA1WEjWgP6LHhwBZeNK1VTsfTFUHCdrfp1bgwQ9xv5ski8PX9rL2dZXvgGDnw",
    ),
    (
        "m/0h/1",
        "xprv9wTYmMFdV23N2TdNG573QoEsfRrWKQgWeibmLntzniatZvR9BmLnvSxqu53Kw1UmYPxLgboyZQaXwTCg8MSY3H2EU4pWcQDnRnrVA1xe8fs",
        "xpub6ASuArnXKPbfEwhqN6e3mwBcDTgzisQN1wXN9BJcM47sSikHjJf3UFHKkNAWbWMiGj7Wf5uMash7SyYq527Hqck2AxYysAA7xmALppuCkwQ",
    ),
    (
        "m/0h/1/2h",
        "xprv9z4pot5VBttmtdRTWfWQmoH1taj2axGVzFqSb8C9xaxKymcFzXBDptWmT7FwuEzG3ryjH4ktypQSAewRiNMjANTtpgP4mLTj34bhnZX7UiM",
        "xpub6D4BDPcP2GT577Vvch3R8wDkScZWzQzMMUm3PWbmWvVJrZwQY4VUNgqFJPMM3No2dFDFGTsxxpG5uJh7n7epu4trkrX7x7DogT5Uv6fcLW5",
    ),
    (
        "m/0h/1/2h/2",
        "xprvA2JDeKCSNNZky6uBCviVfJSKyQ1mDYahRjijr5idH2WwLsEd4Hsb2Tyh8RfQMuPh7f7RtyzTtdrbdqqsunu5Mm3wDvUAKRHSC34sJ7in334",
        "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV",
    ),
    (
        "m/0h/1/2h/2/1000000000",
        "xprvA41z7zogVVwxVSgdKUHDy1SKmdb533PjDz7J6N6mV6uS3ze1ai8FHa8kmHScGpWmj4WggLyQjgPie1rFSruoUihUZREPSL39UNdE3BBDu76",
        "xpub6H1LXWLaKsWFhvm6RVpEL9P4KfRZSW7abD2ttkWP3SSQvnyA8FSVqNTEcYFgJS2UaFcxupHiYkro49S8yGasTvXEYBVPamhGW6cFJodrTHy",
    ),
];
/// BIP32 test vector 2: seed, then every chain level (path, xprv, xpub).
const BIP32_VECTOR_2_SEED: &str = "fffcf9f6f3f0edeae7e4e1dedbd8d5d2cfccc9c6c3c0bdbab7b4b1aeaba8a5a29f9c999693908d8a8784817e7b7875726f6c696663605d5a5754514e4b484542";
const BIP32_VECTOR_2: [(&str, &str, &str); 6] = [
    (
        "m",
        "xprv9s21ZrQH143K31xYSDQpPDxsXRTUcvj2iNHm5NUtrGiGG5e2DtALGdso3pGz6ssrdK4PFmM8NSpSBHNqPqm55Qn3LqFtT2emdEXVYsCzC2U",
        "xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB",
    ),
    (
        "m/0",
        "xprv9vHkqa6EV4sPZHYqZznhT2NPtPCjKuDKGY38FBWLvgaDx45zo9WQRUT3dKYnjwih2yJD9mkrocEZXo1ex8G81dwSM1fwqWpWkeS3v86pgKt",
        "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgFxHmwMkQTPH",
    ),
    (
        "m/0/2147483647h",
        "xprv9wSp6B7kry3Vj9m1zSnLvN3xH8RdsPP1Mh7fAaR7aRLcQMKTR2vidYEeEg2mUCTAwCd6vnxVrcjfy2kRgVsFawNzmjuHc2YmYRmagcEPdU9",
        "xpub6ASAVgeehLbnwdqV6UKMHVzgqAG8Gr6riv3Fxxpj8ksbH9ebxaEyBLZ85ySDhKiLDBrQSARLq1uNRts8RuJiHjaDMBU4Zn9h8LZNnBC5y4a",
    ),
    (
        "m/0/2147483647h/1",
        "xprv9zFnWC6h2cLgpmSA46vutJzBcfJ8yaJGg8cX1e5StJh45BBciYTRXSd25UEPVuesF9yog62tGAQtHjXajPPdbRCHuWS6T8XA2ECKADdw4Ef",
        "xpub6DF8uhdarytz3FWdA8TvFSvvAh8dP3283MY7p2V4SeE2wyWmG5mg5EwVvmdMVCQcoNJxGoWaU9DCWh89LojfZ537wTfunKau47EL2dhHKon",
    ),
    (
        "m/0/2147483647h/1/2147483646h",
        "xprvA1RpRA33e1JQ7ifknakTFpgNXPmW2YvmhqLQYMmrj4xJXXWYpDPS3xz7iAxn8L39njGVyuoseXzU6rcxFLJ8HFsTjSyQbLYnMpCqE2VbFWc",
        "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL",
    ),
    (
        "m/0/2147483647h/1/2147483646h/2",
        "xprvA2nrNbFZABcdryreWet9Ea4LvTJcGsqrMzxHx98MMrotbir7yrKCEXw7nadnHM8Dq38EGfSh6dqA9QWTyefMLEcBYJUuekgW4BYPJcr9E7j",
        "xpub6FnCn6nSzZAw5Tw7cgR9bi15UV96gLZhjDstkXXxvCLsUXBGXPdSnLFbdpq8p9HmGsApME5hQTZ3emM2rnY5agb9rXpVGyy3bdW6EEgAtqt",
    ),
];

// ---------------------------------------------------------------------------------------------------
// BIP32 (K6)
// ---------------------------------------------------------------------------------------------------

/// Derives every level of a BIP32 vector privately from the seed, checks xprv and xpub, and where the
/// step is non-hardened also checks that public derivation from the parent xpub gives the same key.
fn check_bip32_chain(seed_hex: &str, levels: &[(&str, &str, &str)]) {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(NetworkKind::Main, &unhex(seed_hex)).unwrap();
    let mut parent_xpub: Option<Xpub> = None;
    for (path, xprv, xpub) in levels {
        let path = DerivationPath::from_str(path).unwrap();
        let derived = master.derive_priv(&secp, &path).unwrap();
        let derived_pub = Xpub::from_priv(&secp, &derived);
        assert_eq!(derived.to_string(), *xprv, "xprv at {path}");
        assert_eq!(derived_pub.to_string(), *xpub, "xpub at {path}");
        assert_eq!(Xpriv::from_str(xprv).unwrap(), derived, "xprv parse at {path}");
        if let (Some(parent), Some(last)) = (parent_xpub, path.as_ref().last())
            && last.is_normal()
        {
            assert_eq!(parent.ckd_pub(&secp, *last).unwrap(), derived_pub, "public derivation at {path}");
        }
        parent_xpub = Some(derived_pub);
    }
}

#[test]
fn k6_bip32_test_vector_1_all_levels() {
    check_bip32_chain(BIP32_VECTOR_1_SEED, &BIP32_VECTOR_1);
}

#[test]
fn k6_bip32_test_vector_2_all_levels() {
    check_bip32_chain(BIP32_VECTOR_2_SEED, &BIP32_VECTOR_2);
}

// ---------------------------------------------------------------------------------------------------
// BIP39 (K6): Trezor's English vectors, all with the passphrase "TREZOR"
// ---------------------------------------------------------------------------------------------------

/// (entropy, mnemonic, seed, BIP32 root xprv).
const BIP39_TREZOR_VECTORS: [(&str, &str, &str, &str); 6] = [
    (
        "00000000000000000000000000000000",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04",
        "xprv9s21ZrQH143K3h3fDYiay8mocZ3afhfULfb5GX8kCBdno77K4HiA15Tg23wpbeF1pLfs1c5SPmYHrEpTuuRhxMwvKDwqdKiGJS9XFKzUsAF",
    ),
    (
        "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
        "legal winner thank year wave sausage worth useful legal winner thank yellow",
        "2e8905819b8723fe2c1d161860e5ee1830318dbf49a83bd451cfb8440c28bd6fa457fe1296106559a3c80937a1c1069be3a3a5bd381ee6260e8d9739fce1f607",
        "xprv9s21ZrQH143K2gA81bYFHqU68xz1cX2APaSq5tt6MFSLeXnCKV1RVUJt9FWNTbrrryem4ZckN8k4Ls1H6nwdvDTvnV7zEXs2HgPezuVccsq",
    ),
    (
        "9e885d952ad362caeb4efe34a8e91bd2",
        "ozone drill grab fiber curtain grace pudding thank cruise elder eight picnic",
        "274ddc525802f7c828d8ef7ddbcdc5304e87ac3535913611fbbfa986d0c9e5476c91689f9c8a54fd55bd38606aa6a8595ad213d4c9c9f9aca3fb217069a41028",
        "xprv9s21ZrQH143K2oZ9stBYpoaZ2ktHj7jLz7iMqpgg1En8kKFTXJHsjxry1JbKH19YrDTicVwKPehFKTbmaxgVEc5TpHdS1aYhB2s9aFJBeJH",
    ),
    (
        "6610b25967cdcca9d59875f5cb50b0ea75433311869e930b",
        "gravity machine north sort system female filter attitude volume fold club stay feature office ecology stable narrow fog",
        "628c3827a8823298ee685db84f55caa34b5cc195a778e52d45f59bcf75aba68e4d7590e101dc414bc1bbd5737666fbbef35d1f1903953b66624f910feef245ac",
        "xprv9s21ZrQH143K3uT8eQowUjsxrmsA9YUuQQK1RLqFufzybxD6DH6gPY7NjJ5G3EPHjsWDrs9iivSbmvjc9DQJbJGatfa9pv4MZ3wjr8qWPAK",
    ),
    (
        "68a79eaca2324873eacc50cb9c6eca8cc68ea5d936f98787c60c7ebc74e6ce7c",
        "hamster diagram private dutch cause delay private meat slide toddler razor book happy fancy gospel tennis maple dilemma loan word shrug inflict delay length",
        "64c87cde7e12ecf6704ab95bb1408bef047c22db4cc7491c4271d170a1b213d20b385bc1588d9c7b38f1b39d415665b8a9030c9ec653d75e65f847d8fc1fc440",
        "xprv9s21ZrQH143K2XTAhys3pMNcGn261Fi5Ta2Pw8PwaVPhg3D8DWkzWQwjTJfskj8ofb81i9NP2cUNKxwjueJHHMQAnxtivTA75uUFqPFeWzk",
    ),
    (
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo vote",
        "dd48c104698c30cfe2b6142103248622fb7bb0ff692eebb00089b32d22484e1613912f0a5b694407be899ffd31ed3992c456cdf60f5d4564b8ba3f05a69890ad",
        "xprv9s21ZrQH143K2WFF16X85T2QCpndrGwx6GueB72Zf3AHwHJaknRXNF37ZmDrtHrrLSHvbuRejXcnYxoZKvRquTPyp2JiNG3XcjQyzSEgqCB",
    ),
];

#[test]
fn k6_bip39_trezor_vectors_with_passphrase_trezor() {
    for (entropy, words, seed, xprv) in BIP39_TREZOR_VECTORS {
        let mnemonic = bip39::Mnemonic::from_entropy(&unhex(entropy)).unwrap();
        assert_eq!(mnemonic.to_string(), words, "entropy {entropy}");
        assert_eq!(hex::encode(mnemonic.to_seed("TREZOR")), seed, "seed of {words}");
        // kinko's own path from words to the BIP32 master key.
        let master = MasterSeed::from_mnemonic_with_passphrase(words, "TREZOR").unwrap().to_bip32_master().unwrap();
        assert_eq!(master.to_string(), xprv, "master key of {words}");
    }
    // The checksum is enforced: the last word of the first vector changed.
    let bad = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon";
    assert!(MasterSeed::from_mnemonic_with_passphrase(bad, "TREZOR").is_err());
}

// ---------------------------------------------------------------------------------------------------
// BIP84 (K6)
// ---------------------------------------------------------------------------------------------------

const BIP84_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
const BIP84_ROOT_ZPRV: &str =
    "zprvAWgYBBk7JR8Gjrh4UJQ2uJdG1r3WNRRfURiABBE3RvMXYSrRJL62XuezvGdPvG6GFBZduosCc1YP5wixPox7zhZLfiUm8aunE96BBa4Kei5";
const BIP84_ROOT_ZPUB: &str =
    "zpub6jftahH18ngZxLmXaKw3GSZzZsszmt9WqedkyZdezFtWRFBZqsQH5hyUmb4pCEeZGmVfQuP5bedXTB8is6fTv19U1GQRyQUKQGUTzyHACMF";
const BIP84_ACCOUNT_ZPRV: &str =
    "zprvAdG4iTXWBoARxkkzNpNh8r6Qag3irQB8PzEMkAFeTRXxHpbF9z4QgEvBRmfvqWvGp42t42nvgGpNgYSJA9iefm1yYNZKEm7z6qUWCroSQnE";
const BIP84_ACCOUNT_ZPUB: &str =
    "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs";
/// The same account key in BIP32's own `xpub` serialization.
const BIP84_ACCOUNT_XPUB: &str =
    "xpub6CatWdiZiodmUeTDp8LT5or8nmbKNcuyvz7WyksVFkKB4RHwCD3XyuvPEbvqAQY3rAPshWcMLoP2fMFMKHPJ4ZeZXYVUhLv1VMrjPC7PW6V";

/// The 74 bytes after the 4 version bytes of a base58check extended key: SLIP-132 `zpub`/`zprv` and
/// BIP32 `xpub`/`xprv` differ only in those version bytes.
fn extended_key_payload(s: &str) -> Vec<u8> {
    bitcoin::base58::decode_check(s).unwrap()[4..].to_vec()
}

fn bip84_master() -> Xpriv {
    MasterSeed::from_mnemonic(BIP84_MNEMONIC).unwrap().to_bip32_master().unwrap()
}

#[test]
fn k6_bip84_vectors() {
    let secp = Secp256k1::new();
    let master = bip84_master();
    assert_eq!(extended_key_payload(BIP84_ROOT_ZPRV), master.encode()[4..]);
    assert_eq!(extended_key_payload(BIP84_ROOT_ZPUB), Xpub::from_priv(&secp, &master).encode()[4..]);
    assert_eq!(master.fingerprint(&secp), Fingerprint::from_str("73c5da0a").unwrap());

    let xpub = account_xpub(&master, Network::Bitcoin).unwrap();
    assert_eq!(xpub.to_string(), BIP84_ACCOUNT_XPUB);
    assert_eq!(extended_key_payload(BIP84_ACCOUNT_ZPUB), xpub.encode()[4..]);
    let account_priv = master.derive_priv(&secp, &DerivationPath::from_str("m/84'/0'/0'").unwrap()).unwrap();
    assert_eq!(extended_key_payload(BIP84_ACCOUNT_ZPRV), account_priv.encode()[4..]);

    // (chain, index, private key WIF, address); public keys where the BIP lists them.
    let addresses = [
        (
            Keychain::Receive,
            0,
            "KyZpNDKnfs94vbrwhJneDi77V6jF64PWPF8x5cdJb8ifgg2DUc9d",
            "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",
        ),
        (
            Keychain::Receive,
            1,
            "Kxpf5b8p3qX56DKEe5NqWbNUP9MnqoRFzZwHRtsFqhzuvUJsYZCy",
            "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g",
        ),
        (
            Keychain::Change,
            0,
            "KxuoxufJL5csa1Wieb2kp29VNdn92Us8CoaUG3aGtPtcF3AzeXvF",
            "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el",
        ),
    ];
    let account = Bip84Account::from_master(&master, Network::Bitcoin).unwrap();
    for (keychain, index, wif, address) in addresses {
        // Public derivation (what the online side does) ...
        assert_eq!(account.address(keychain, index).unwrap().to_string(), address);
        // ... agrees with private derivation (what the signer does).
        let path = DerivationPath::from_str(&format!("m/84'/0'/0'/{}/{index}", keychain.index())).unwrap();
        let key = master.derive_priv(&secp, &path).unwrap().to_priv();
        assert_eq!(key.to_wif(), wif);
        assert_eq!(key.public_key(&secp), PublicKey::new(account.public_key(keychain, index).unwrap().0));
    }
    assert_eq!(receive_address(&xpub, Network::Bitcoin, 0).unwrap().to_string(), addresses[0].3);
    assert_eq!(
        account.public_key(Keychain::Receive, 0).unwrap().to_string(),
        "0330d54fd0dd420a6e5f8d3624f5f3482cae350f79d5f0753bf5beef9c2d91af3c"
    );
    assert_eq!(
        account.public_key(Keychain::Change, 0).unwrap().to_string(),
        "03025324888e429ab8e3dbaf1f7802648b9cd01e9b418485c5fa4c1b9b5700e1a6"
    );
    let change0 = change_address(&xpub, Network::Bitcoin, 0).unwrap();
    assert_eq!(change0.to_string(), addresses[2].3);
    assert!(is_own_change(&xpub, Network::Bitcoin, &change0, 0));
    let receive0 = receive_address(&xpub, Network::Bitcoin, 0).unwrap();
    assert!(!is_own_change(&xpub, Network::Bitcoin, &receive0, 0), "a receive address is not change");

    // The exported form (fingerprint + xpub text) is what the online side holds; it derives the same.
    let exported = Bip84Account::from_exported("73c5da0a", BIP84_ACCOUNT_XPUB, Network::Bitcoin).unwrap();
    assert_eq!(exported, account);
}

// ---------------------------------------------------------------------------------------------------
// BIP143 (C5): the native P2WPKH example
// ---------------------------------------------------------------------------------------------------

const BIP143_UNSIGNED_TX: &str = "0100000002fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f0000000000eeffffffef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac11000000";
const BIP143_SIGNED_TX: &str = "01000000000102fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f00000000494830450221008b9d1dc26ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b194ba3f9281a99f2b1c0a19c0489bc22ede944ccf4ecbab4cc618ef3ed01eeffffffef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac000247304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee0121025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee635711000000";
/// Input 0 spends a P2PK output of 6.25 BTC, input 1 the P2WPKH output of 6 BTC.
const BIP143_PREVOUT_0: (&str, u64) =
    ("2103c9f4836b9a4f77fc0d81f7bcb01b7f1b35916864b9476c241ce9fc198bd25432ac", 625_000_000);
const BIP143_PREVOUT_1: (&str, u64) = ("00141d0f172a0ecb48aee1be1f2687d2963ae33f71a1", 600_000_000);
const BIP143_INPUT_1_KEY: &str = "619c335025c7f4012e556c2a58b2506e30b8511b53ade95ea316fd8c3286feb9";
const BIP143_INPUT_1_SIGHASH: &str = "c37af31116d1b27caf68aae9e3ac82f1477929014d5b917657d0eb49478cb670";

fn bip143_prevouts() -> Vec<TxOut> {
    [BIP143_PREVOUT_0, BIP143_PREVOUT_1]
        .iter()
        .map(|(script, sat)| TxOut {
            value: Amount::from_sat(*sat),
            script_pubkey: ScriptBuf::from_bytes(unhex(script)),
        })
        .collect()
}

#[test]
fn c5_bip143_p2wpkh_sighash_vector() {
    let tx: Transaction = deserialize(&unhex(BIP143_UNSIGNED_TX)).unwrap();
    let prevout = &bip143_prevouts()[1];
    let mut cache = SighashCache::new(&tx);
    let sighash = cache.p2wpkh_signature_hash(1, &prevout.script_pubkey, prevout.value, EcdsaSighashType::All).unwrap();
    assert_eq!(sighash.to_byte_array().to_vec(), unhex(BIP143_INPUT_1_SIGHASH));

    // The BIP's signature is over exactly this digest, by the BIP's key; RFC 6979 reproduces it.
    let secp = Secp256k1::new();
    let signed: Transaction = deserialize(&unhex(BIP143_SIGNED_TX)).unwrap();
    let witness: Vec<&[u8]> = signed.input[1].witness.iter().collect();
    assert_eq!(witness.len(), 2);
    let official = bitcoin::ecdsa::Signature::from_slice(witness[0]).unwrap();
    let key = SecretKey::from_slice(&unhex(BIP143_INPUT_1_KEY)).unwrap();
    let msg = Message::from_digest(sighash.to_byte_array());
    assert_eq!(witness[1], key.public_key(&secp).serialize());
    secp.verify_ecdsa(&msg, &official.signature, &key.public_key(&secp)).unwrap();
    assert_eq!(secp.sign_ecdsa(&msg, &key), official.signature);
    assert_eq!(official.sighash_type, EcdsaSighashType::All);
}

#[test]
fn c5_bip143_signed_example_verifies_with_libbitcoinconsensus() {
    let signed: Transaction = deserialize(&unhex(BIP143_SIGNED_TX)).unwrap();
    let prevouts = bip143_prevouts();
    verify_spend(&signed, &prevouts).unwrap();
    // BIP143 commits to the spent amount: the same witness over a different amount is invalid, and the
    // failing input is named. Input 0 (legacy P2PK, whose signature does not cover amounts) still passes.
    let mut wrong_amount = prevouts.clone();
    wrong_amount[1].value = Amount::from_sat(600_000_001);
    assert!(matches!(verify_spend(&signed, &wrong_amount), Err(ConsensusError::Script { input: 1, .. })));
    assert_eq!(verify_spend(&signed, &prevouts[..1]), Err(ConsensusError::PrevoutCount { inputs: 2, prevouts: 1 }));
}

// ---------------------------------------------------------------------------------------------------
// BIP174 (K14)
// ---------------------------------------------------------------------------------------------------

#[test]
fn k14_bip174_invalid_psbts_are_refused() {
    for (reason, psbt_hex) in BIP174_INVALID {
        assert!(Psbt::deserialize(&unhex(psbt_hex)).is_err(), "accepted an invalid PSBT: {reason}");
    }
}

#[test]
fn k14_bip174_valid_psbts_parse_and_round_trip() {
    for (n, psbt_hex) in BIP174_VALID.iter().enumerate() {
        let bytes = unhex(psbt_hex);
        let psbt = Psbt::deserialize(&bytes).unwrap_or_else(|e| panic!("valid vector {}: {e}", n + 1));
        assert_eq!(Psbt::deserialize(&psbt.serialize()).unwrap(), psbt, "valid vector {} re-parse", n + 1);
    }
    // The first valid vector is byte-exact after a round trip, and its base64 form is BIP174's.
    let first = Psbt::deserialize(&unhex(BIP174_VALID[0])).unwrap();
    assert_eq!(first.serialize_hex(), BIP174_VALID[0]);
    assert_eq!(first.unsigned_tx.input.len(), 1);
    assert_eq!(first.unsigned_tx.output.len(), 2);
}

// The BIP174 roles example (creator → updater → signer → combiner → finalizer → extractor), with the
// BIP's data: testnet master key, two inputs (P2SH 2-of-2 multisig, P2SH-P2WSH 2-of-2 multisig).
const BIP174_TPRV: &str =
    "tprv8ZgxMBicQKsPd9TeAdPADNnSyH9SSUUbTVeFszDE23Ki6TBB5nCefAdHkK8Fm3qMQR6sHwA56zqRmKmxnHk37JkiFzvncDqoKmPWubu7hDF";
const BIP174_SEED_WIF: &str = "cUkG8i1RFfWGWy5ziR11zJ5V4U4W3viSFCfyJmZnvQaUsd1xuF3T";
const BIP174_PREVIOUS_TX_0: &str = "0200000000010158e87a21b56daf0c23be8e7070456c336f7cbaa5c8757924f545887bb2abdd7501000000171600145f275f436b09a8cc9a2eb2a2f528485c68a56323feffffff02d8231f1b0100000017a914aed962d6654f9a2b36608eb9d64d2b260db4f1118700c2eb0b0000000017a914b7f5faf40e3d40a5a459b1db3535f2b72fa921e88702483045022100a22edcc6e5bc511af4cc4ae0de0fcd75c7e04d8c1c3a8aa9d820ed4b967384ec02200642963597b9b1bc22c75e9f3e117284a962188bf5e8a74c895089046a20ad770121035509a48eb623e10aace8bfd0212fdb8a8e5af3c94b0b133b95e114cab89e4f7965000000";
const BIP174_PREVIOUS_TX_1: &str = "0200000001aad73931018bd25f84ae400b68848be09db706eac2ac18298babee71ab656f8b0000000048473044022058f6fc7c6a33e1b31548d481c826c015bd30135aad42cd67790dab66d2ad243b02204a1ced2604c6735b6393e5b41691dd78b00f0c5942fb9f751856faa938157dba01feffffff0280f0fa020000000017a9140fb9463421696b82c833af241c78c17ddbde493487d0f20a270100000017a91429ca74f8a08f81999428185c97b5d852e4063f618765000000";
const BIP174_REDEEM_SCRIPT_0: &str = "5221029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f2102dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d752ae";
const BIP174_REDEEM_SCRIPT_1: &str = "00208c2353173743b595dfb4a07b72ba8e42e3797da74e87fe7d9d7497e3b2028903";
const BIP174_WITNESS_SCRIPT: &str = "522103089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc21023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e7352ae";
/// (public key, path, WIF of its private key): the keys of the example, in the BIP's order.
const BIP174_KEYS: [(&str, &str, &str); 6] = [
    (
        "029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f",
        "m/0h/0h/0h",
        "cP53pDbR5WtAD8dYAW9hhTjuvvTVaEiQBdrz9XPrgLBeRFiyCbQr",
    ),
    (
        "02dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d7",
        "m/0h/0h/1h",
        "cT7J9YpCwY3AVRFSjN6ukeEeWY6mhpbJPxRaDaP5QTdygQRxP9Au",
    ),
    (
        "03089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc",
        "m/0h/0h/2h",
        "cR6SXDoyfQrcp4piaiHE97Rsgta9mNhGTen9XeonVgwsh4iSgw6d",
    ),
    (
        "023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e73",
        "m/0h/0h/3h",
        "cNBc3SWUip9PPm1GjRoLEJT6T41iNzCYtD7qro84FMnM5zEqeJsE",
    ),
    ("03a9a4c37f5996d3aa25dbac6b570af0650394492942460b354753ed9eeca58771", "m/0h/0h/4h", ""),
    ("027f6399757d2eff55a136ad02c684b1838b6556e5f1b6b34282a94b6b50051096", "m/0h/0h/5h", ""),
];
const BIP174_CREATED: &str = "70736274ff01009a020000000258e87a21b56daf0c23be8e7070456c336f7cbaa5c8757924f545887bb2abdd750000000000ffffffff838d0427d0ec650a68aa46bb0b098aea4422c071b2ca78352a077959d07cea1d0100000000ffffffff0270aaf00800000000160014d85c2b71d0060b09c9886aeb815e50991dda124d00e1f5050000000016001400aea9a2e5f0f876a588df5546e8742d1d87008f000000000000000000";
const BIP174_UPDATED_1: &str = "70736274ff01009a020000000258e87a21b56daf0c23be8e7070456c336f7cbaa5c8757924f545887bb2abdd750000000000ffffffff838d0427d0ec650a68aa46bb0b098aea4422c071b2ca78352a077959d07cea1d0100000000ffffffff0270aaf00800000000160014d85c2b71d0060b09c9886aeb815e50991dda124d00e1f5050000000016001400aea9a2e5f0f876a588df5546e8742d1d87008f00000000000100bb0200000001aad73931018bd25f84ae400b68848be09db706eac2ac18298babee71ab656f8b0000000048473044022058f6fc7c6a33e1b31548d481c826c015bd30135aad42cd67790dab66d2ad243b02204a1ced2604c6735b6393e5b41691dd78b00f0c5942fb9f751856faa938157dba01feffffff0280f0fa020000000017a9140fb9463421696b82c833af241c78c17ddbde493487d0f20a270100000017a91429ca74f8a08f81999428185c97b5d852e4063f6187650000000104475221029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f2102dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d752ae2206029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f10d90c6a4f000000800000008000000080220602dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d710d90c6a4f0000008000000080010000800001012000c2eb0b0000000017a914b7f5faf40e3d40a5a459b1db3535f2b72fa921e88701042200208c2353173743b595dfb4a07b72ba8e42e3797da74e87fe7d9d7497e3b2028903010547522103089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc21023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e7352ae2206023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e7310d90c6a4f000000800000008003000080220603089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc10d90c6a4f00000080000000800200008000220203a9a4c37f5996d3aa25dbac6b570af0650394492942460b354753ed9eeca5877110d90c6a4f000000800000008004000080002202027f6399757d2eff55a136ad02c684b1838b6556e5f1b6b34282a94b6b5005109610d90c6a4f00000080000000800500008000";
const BIP174_UPDATED_2: &str = "70736274ff01009a020000000258e87a21b56daf0c23be8e7070456c336f7cbaa5c8757924f545887bb2abdd750000000000ffffffff838d0427d0ec650a68aa46bb0b098aea4422c071b2ca78352a077959d07cea1d0100000000ffffffff0270aaf00800000000160014d85c2b71d0060b09c9886aeb815e50991dda124d00e1f5050000000016001400aea9a2e5f0f876a588df5546e8742d1d87008f00000000000100bb0200000001aad73931018bd25f84ae400b68848be09db706eac2ac18298babee71ab656f8b0000000048473044022058f6fc7c6a33e1b31548d481c826c015bd30135aad42cd67790dab66d2ad243b02204a1ced2604c6735b6393e5b41691dd78b00f0c5942fb9f751856faa938157dba01feffffff0280f0fa020000000017a9140fb9463421696b82c833af241c78c17ddbde493487d0f20a270100000017a91429ca74f8a08f81999428185c97b5d852e4063f618765000000010304010000000104475221029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f2102dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d752ae2206029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f10d90c6a4f000000800000008000000080220602dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d710d90c6a4f0000008000000080010000800001012000c2eb0b0000000017a914b7f5faf40e3d40a5a459b1db3535f2b72fa921e8870103040100000001042200208c2353173743b595dfb4a07b72ba8e42e3797da74e87fe7d9d7497e3b2028903010547522103089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc21023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e7352ae2206023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e7310d90c6a4f000000800000008003000080220603089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc10d90c6a4f00000080000000800200008000220203a9a4c37f5996d3aa25dbac6b570af0650394492942460b354753ed9eeca5877110d90c6a4f000000800000008004000080002202027f6399757d2eff55a136ad02c684b1838b6556e5f1b6b34282a94b6b5005109610d90c6a4f00000080000000800500008000";
const BIP174_SIGNED_2: &str = "70736274ff01009a020000000258e87a21b56daf0c23be8e7070456c336f7cbaa5c8757924f545887bb2abdd750000000000ffffffff838d0427d0ec650a68aa46bb0b098aea4422c071b2ca78352a077959d07cea1d0100000000ffffffff0270aaf00800000000160014d85c2b71d0060b09c9886aeb815e50991dda124d00e1f5050000000016001400aea9a2e5f0f876a588df5546e8742d1d87008f00000000000100bb0200000001aad73931018bd25f84ae400b68848be09db706eac2ac18298babee71ab656f8b0000000048473044022058f6fc7c6a33e1b31548d481c826c015bd30135aad42cd67790dab66d2ad243b02204a1ced2604c6735b6393e5b41691dd78b00f0c5942fb9f751856faa938157dba01feffffff0280f0fa020000000017a9140fb9463421696b82c833af241c78c17ddbde493487d0f20a270100000017a91429ca74f8a08f81999428185c97b5d852e4063f618765000000220202dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d7483045022100f61038b308dc1da865a34852746f015772934208c6d24454393cd99bdf2217770220056e675a675a6d0a02b85b14e5e29074d8a25a9b5760bea2816f661910a006ea01010304010000000104475221029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f2102dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d752ae2206029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f10d90c6a4f000000800000008000000080220602dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d710d90c6a4f0000008000000080010000800001012000c2eb0b0000000017a914b7f5faf40e3d40a5a459b1db3535f2b72fa921e8872202023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e73473044022065f45ba5998b59a27ffe1a7bed016af1f1f90d54b3aa8f7450aa5f56a25103bd02207f724703ad1edb96680b284b56d4ffcb88f7fb759eabbe08aa30f29b851383d2010103040100000001042200208c2353173743b595dfb4a07b72ba8e42e3797da74e87fe7d9d7497e3b2028903010547522103089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc21023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e7352ae2206023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e7310d90c6a4f000000800000008003000080220603089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc10d90c6a4f00000080000000800200008000220203a9a4c37f5996d3aa25dbac6b570af0650394492942460b354753ed9eeca5877110d90c6a4f000000800000008004000080002202027f6399757d2eff55a136ad02c684b1838b6556e5f1b6b34282a94b6b5005109610d90c6a4f00000080000000800500008000";
const BIP174_FINALIZED: &str = "70736274ff01009a020000000258e87a21b56daf0c23be8e7070456c336f7cbaa5c8757924f545887bb2abdd750000000000ffffffff838d0427d0ec650a68aa46bb0b098aea4422c071b2ca78352a077959d07cea1d0100000000ffffffff0270aaf00800000000160014d85c2b71d0060b09c9886aeb815e50991dda124d00e1f5050000000016001400aea9a2e5f0f876a588df5546e8742d1d87008f00000000000100bb0200000001aad73931018bd25f84ae400b68848be09db706eac2ac18298babee71ab656f8b0000000048473044022058f6fc7c6a33e1b31548d481c826c015bd30135aad42cd67790dab66d2ad243b02204a1ced2604c6735b6393e5b41691dd78b00f0c5942fb9f751856faa938157dba01feffffff0280f0fa020000000017a9140fb9463421696b82c833af241c78c17ddbde493487d0f20a270100000017a91429ca74f8a08f81999428185c97b5d852e4063f6187650000000107da00473044022074018ad4180097b873323c0015720b3684cc8123891048e7dbcd9b55ad679c99022073d369b740e3eb53dcefa33823c8070514ca55a7dd9544f157c167913261118c01483045022100f61038b308dc1da865a34852746f015772934208c6d24454393cd99bdf2217770220056e675a675a6d0a02b85b14e5e29074d8a25a9b5760bea2816f661910a006ea01475221029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f2102dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d752ae0001012000c2eb0b0000000017a914b7f5faf40e3d40a5a459b1db3535f2b72fa921e8870107232200208c2353173743b595dfb4a07b72ba8e42e3797da74e87fe7d9d7497e3b20289030108da0400473044022062eb7a556107a7c73f45ac4ab5a1dddf6f7075fb1275969a7f383efff784bcb202200c05dbb7470dbf2f08557dd356c7325c1ed30913e996cd3840945db12228da5f01473044022065f45ba5998b59a27ffe1a7bed016af1f1f90d54b3aa8f7450aa5f56a25103bd02207f724703ad1edb96680b284b56d4ffcb88f7fb759eabbe08aa30f29b851383d20147522103089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc21023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e7352ae00220203a9a4c37f5996d3aa25dbac6b570af0650394492942460b354753ed9eeca5877110d90c6a4f000000800000008004000080002202027f6399757d2eff55a136ad02c684b1838b6556e5f1b6b34282a94b6b5005109610d90c6a4f00000080000000800500008000";
const BIP174_EXTRACTED_TX: &str = "0200000000010258e87a21b56daf0c23be8e7070456c336f7cbaa5c8757924f545887bb2abdd7500000000da00473044022074018ad4180097b873323c0015720b3684cc8123891048e7dbcd9b55ad679c99022073d369b740e3eb53dcefa33823c8070514ca55a7dd9544f157c167913261118c01483045022100f61038b308dc1da865a34852746f015772934208c6d24454393cd99bdf2217770220056e675a675a6d0a02b85b14e5e29074d8a25a9b5760bea2816f661910a006ea01475221029583bf39ae0a609747ad199addd634fa6108559d6c5cd39b4c2183f1ab96e07f2102dab61ff49a14db6a7d02b0cd1fbb78fc4b18312b5b4e54dae4dba2fbfef536d752aeffffffff838d0427d0ec650a68aa46bb0b098aea4422c071b2ca78352a077959d07cea1d01000000232200208c2353173743b595dfb4a07b72ba8e42e3797da74e87fe7d9d7497e3b2028903ffffffff0270aaf00800000000160014d85c2b71d0060b09c9886aeb815e50991dda124d00e1f5050000000016001400aea9a2e5f0f876a588df5546e8742d1d87008f000400473044022062eb7a556107a7c73f45ac4ab5a1dddf6f7075fb1275969a7f383efff784bcb202200c05dbb7470dbf2f08557dd356c7325c1ed30913e996cd3840945db12228da5f01473044022065f45ba5998b59a27ffe1a7bed016af1f1f90d54b3aa8f7450aa5f56a25103bd02207f724703ad1edb96680b284b56d4ffcb88f7fb759eabbe08aa30f29b851383d20147522103089dc10c7ac6db54f91329af617333db388cead0c231f723379d1b99030b02dc21023add904f3d6dcf59ddb906b0dee23529b7ffb9ed50e5e86151926860221f0e7352ae00000000";

fn bip174_derivation(
    fingerprint: Fingerprint,
    which: &[usize],
) -> BTreeMap<bitcoin::secp256k1::PublicKey, bitcoin::bip32::KeySource> {
    which
        .iter()
        .map(|&i| {
            let (pk, path, _) = BIP174_KEYS[i];
            (
                bitcoin::secp256k1::PublicKey::from_str(pk).unwrap(),
                (fingerprint, DerivationPath::from_str(path).unwrap()),
            )
        })
        .collect()
}

/// A signer holding only the keys `which` (given as WIF, checked against the master key's derivation).
fn bip174_sign(master: &Xpriv, mut psbt: Psbt, which: &[usize]) -> Psbt {
    let secp = Secp256k1::new();
    let mut keys = BTreeMap::new();
    for &i in which {
        let (pk, path, wif) = BIP174_KEYS[i];
        let key = PrivateKey::from_wif(wif).unwrap();
        let derived = master.derive_priv(&secp, &DerivationPath::from_str(path).unwrap()).unwrap().to_priv();
        assert_eq!(key, derived, "WIF of {path}");
        assert_eq!(key.public_key(&secp).to_string(), pk);
        keys.insert(key.public_key(&secp), key);
    }
    psbt.sign(&keys, &secp).expect("signs the inputs it has keys for");
    psbt
}

/// The signatures of `input` in the order of `keys` (CHECKMULTISIG wants the script's key order).
fn bip174_sigs_in_order(psbt: &Psbt, input: usize, keys: &[usize]) -> Vec<Vec<u8>> {
    keys.iter()
        .map(|&i| {
            let pk = PublicKey::from_str(BIP174_KEYS[i].0).unwrap();
            psbt.inputs[input].partial_sigs[&pk].to_vec()
        })
        .collect()
}

fn push(bytes: &[u8]) -> &PushBytes {
    <&PushBytes>::try_from(bytes).unwrap()
}

#[test]
fn k14_bip174_creator_updater_signer_combiner_finalizer_extractor() {
    let secp = Secp256k1::new();
    // The master key, also from its seed.
    let master = Xpriv::from_str(BIP174_TPRV).unwrap();
    let seed = PrivateKey::from_wif(BIP174_SEED_WIF).unwrap();
    assert_eq!(Xpriv::new_master(NetworkKind::Test, &seed.inner.secret_bytes()).unwrap(), master);
    let fingerprint = master.fingerprint(&secp);
    assert_eq!(fingerprint.to_string(), "d90c6a4f");

    // Creator.
    let txid = |s: &str| Txid::from_str(s).unwrap();
    let unsigned = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: [
            ("75ddabb27b8845f5247975c8a5ba7c6f336c4570708ebe230caf6db5217ae858", 0),
            ("1dea7cd05979072a3578cab271c02244ea8a090bbb46aa680a65ecd027048d83", 1),
        ]
        .iter()
        .map(|(id, vout)| TxIn {
            previous_output: OutPoint { txid: txid(id), vout: *vout },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        })
        .collect(),
        output: vec![
            TxOut {
                value: Amount::from_sat(149_990_000),
                script_pubkey: ScriptBuf::from_bytes(unhex("0014d85c2b71d0060b09c9886aeb815e50991dda124d")),
            },
            TxOut {
                value: Amount::from_sat(100_000_000),
                script_pubkey: ScriptBuf::from_bytes(unhex("001400aea9a2e5f0f876a588df5546e8742d1d87008f")),
            },
        ],
    };
    let mut psbt = Psbt::from_unsigned_tx(unsigned).unwrap();
    assert_eq!(psbt.serialize_hex(), BIP174_CREATED);

    // Updater, first pass: UTXOs, scripts, key origins.
    let previous_0: Transaction = deserialize(&unhex(BIP174_PREVIOUS_TX_0)).unwrap();
    let previous_1: Transaction = deserialize(&unhex(BIP174_PREVIOUS_TX_1)).unwrap();
    psbt.inputs[0].non_witness_utxo = Some(previous_1.clone());
    psbt.inputs[0].redeem_script = Some(ScriptBuf::from_bytes(unhex(BIP174_REDEEM_SCRIPT_0)));
    psbt.inputs[0].bip32_derivation = bip174_derivation(fingerprint, &[0, 1]);
    psbt.inputs[1].witness_utxo = Some(previous_0.output[1].clone());
    psbt.inputs[1].redeem_script = Some(ScriptBuf::from_bytes(unhex(BIP174_REDEEM_SCRIPT_1)));
    psbt.inputs[1].witness_script = Some(ScriptBuf::from_bytes(unhex(BIP174_WITNESS_SCRIPT)));
    psbt.inputs[1].bip32_derivation = bip174_derivation(fingerprint, &[2, 3]);
    psbt.outputs[0].bip32_derivation = bip174_derivation(fingerprint, &[4]);
    psbt.outputs[1].bip32_derivation = bip174_derivation(fingerprint, &[5]);
    assert_eq!(psbt.serialize_hex(), BIP174_UPDATED_1);

    // Updater, second pass: SIGHASH_ALL on both inputs.
    for input in &mut psbt.inputs {
        input.sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::All));
    }
    assert_eq!(psbt.serialize_hex(), BIP174_UPDATED_2);

    // Two signers, each with two of the four keys.
    let signed_1 = bip174_sign(&master, psbt.clone(), &[0, 2]);
    let signed_2 = bip174_sign(&master, psbt, &[1, 3]);
    assert_eq!(signed_2.serialize_hex(), BIP174_SIGNED_2);

    // Combiner.
    let mut combined = signed_1;
    combined.combine(signed_2).unwrap();
    assert_eq!(combined.inputs[0].partial_sigs.len(), 2);
    assert_eq!(combined.inputs[1].partial_sigs.len(), 2);

    // Finalizer (test code, as in the BIP: P2SH multisig and P2SH-P2WSH multisig scripts).
    let sigs_0 = bip174_sigs_in_order(&combined, 0, &[0, 1]);
    let sigs_1 = bip174_sigs_in_order(&combined, 1, &[2, 3]);
    let input_0 = &mut combined.inputs[0];
    let redeem_0 = input_0.redeem_script.take().unwrap();
    input_0.final_script_sig = Some(
        Builder::new()
            .push_opcode(bitcoin::opcodes::OP_0) // CHECKMULTISIG pops one extra item.
            .push_slice(push(&sigs_0[0]))
            .push_slice(push(&sigs_0[1]))
            .push_slice(push(redeem_0.as_bytes()))
            .into_script(),
    );
    input_0.partial_sigs.clear();
    input_0.sighash_type = None;
    input_0.bip32_derivation.clear();
    let input_1 = &mut combined.inputs[1];
    let redeem_1 = input_1.redeem_script.take().unwrap();
    let witness_script = input_1.witness_script.take().unwrap();
    input_1.final_script_sig = Some(Builder::new().push_slice(push(redeem_1.as_bytes())).into_script());
    input_1.final_script_witness =
        Some(Witness::from_slice(&[vec![], sigs_1[0].clone(), sigs_1[1].clone(), witness_script.to_bytes()]));
    input_1.partial_sigs.clear();
    input_1.sighash_type = None;
    input_1.bip32_derivation.clear();
    assert_eq!(combined.serialize_hex(), BIP174_FINALIZED);

    // Extractor.
    let tx = combined.extract_tx().unwrap();
    assert_eq!(serialize_hex(&tx), BIP174_EXTRACTED_TX);

    // And Bitcoin Core's interpreter accepts the spend (P2SH multisig and P2SH-P2WSH multisig).
    let prevouts = vec![previous_1.output[0].clone(), previous_0.output[1].clone()];
    verify_spend(&tx, &prevouts).unwrap();
}

// ---------------------------------------------------------------------------------------------------
// Withdrawal PSBTs (M9, C5): built by kinko, signed by rust-bitcoin, verified by libbitcoinconsensus
// ---------------------------------------------------------------------------------------------------

fn regtest_wallet() -> (Xpriv, Bip84Account) {
    let master = bip84_master();
    let account = Bip84Account::from_master(&master, Network::Regtest).unwrap();
    (master, account)
}

/// A UTXO of ours at `keychain/index`; the funding txid is synthetic (its bytes are `tag`), which
/// libbitcoinconsensus does not mind: it checks scripts against the given prevouts.
fn utxo(account: &Bip84Account, tag: u8, keychain: Keychain, index: u32, sat: u64) -> SpendableUtxo {
    SpendableUtxo {
        outpoint: OutPoint { txid: Txid::from_byte_array([tag; 32]), vout: u32::from(tag % 3) },
        value: Amount::from_sat(sat),
        keychain,
        index,
        script_pubkey: account.script_pubkey(keychain, index).unwrap(),
    }
}

/// A regtest address that is not ours: the P2WPKH of BIP32 test vector 1's master key.
fn foreign_destination() -> Address {
    let secp = Secp256k1::new();
    let other = Xpriv::new_master(NetworkKind::Test, &unhex(BIP32_VECTOR_1_SEED)).unwrap();
    Address::p2wpkh(&Xpub::from_priv(&secp, &other).to_pub(), Network::Regtest)
}

/// The signer's part, done here with rust-bitcoin: sign every input with the master key (found through
/// `bip32_derivation`), finalize, extract. Returns the transaction and the outputs it spends.
fn sign_and_extract(master: &Xpriv, built: &BuiltPsbt) -> (Transaction, Vec<TxOut>) {
    let secp = Secp256k1::new();
    let mut psbt = built.psbt.clone();
    let used = psbt.sign(master, &secp).expect("every input is ours");
    assert_eq!(used.len(), psbt.inputs.len());
    let prevouts = prevouts_of(&psbt).unwrap();
    finalize_p2wpkh(&mut psbt).unwrap();
    (psbt.extract_tx().unwrap(), prevouts)
}

#[test]
fn c5_withdrawal_psbt_signs_finalizes_and_verifies_with_libbitcoinconsensus() {
    let (master, account) = regtest_wallet();
    let utxos = vec![
        utxo(&account, 1, Keychain::Receive, 0, 50_000),
        utxo(&account, 2, Keychain::Receive, 5, 120_000),
        utxo(&account, 3, Keychain::Change, 2, 30_000),
    ];
    let destination = foreign_destination();
    let request = WithdrawalRequest {
        destination: &destination,
        amount: Amount::from_sat(150_000),
        fee_rate_sat_per_vb: 10,
        change_index: 3,
    };
    let built = build_withdrawal(&account, &utxos, &request).unwrap();

    // Largest first: 120 000 + 50 000 covers 150 000 and the fee; the 30 000 UTXO stays unspent.
    assert_eq!(built.spent_outpoints(), vec![utxos[1].outpoint, utxos[0].outpoint]);
    let tx = &built.psbt.unsigned_tx;
    assert!(tx.input.iter().all(|i| i.sequence == RBF_SEQUENCE && i.sequence.to_consensus_u32() == 0xffff_fffd));
    assert_eq!(tx.output[0], TxOut { value: request.amount, script_pubkey: destination.script_pubkey() });
    let change = built.change.expect("change is well above dust");
    assert_eq!((change.vout, change.index), (1, 3));
    let expected_change = change_address(&account.xpub, Network::Regtest, 3).unwrap();
    assert_eq!(tx.output[1].script_pubkey, expected_change.script_pubkey());
    assert!(account.is_own_change_script(&tx.output[1].script_pubkey, 3));
    assert_eq!(tx.output[1].value, change.value);
    assert_eq!(Amount::from_sat(170_000), request.amount + change.value + built.fee);
    assert_eq!(built.fee, Amount::from_sat(10 * built.estimated_vsize_vb));

    // What a signer needs to check the PSBT: the spent outputs and the key origins, the change's too.
    for (input, spent) in built.psbt.inputs.iter().zip([&utxos[1], &utxos[0]]) {
        assert_eq!(input.witness_utxo, Some(TxOut { value: spent.value, script_pubkey: spent.script_pubkey.clone() }));
        let origin = account.key_source(spent.keychain, spent.index).unwrap();
        assert_eq!(input.bip32_derivation.values().collect::<Vec<_>>(), vec![&origin]);
    }
    let change_origin = account.key_source(Keychain::Change, 3).unwrap();
    assert_eq!(built.psbt.outputs[1].bip32_derivation.values().collect::<Vec<_>>(), vec![&change_origin]);
    assert!(built.psbt.outputs[0].bip32_derivation.is_empty());

    let (signed, prevouts) = sign_and_extract(&master, &built);
    verify_spend(&signed, &prevouts).unwrap();
    // The vsize estimate is an upper bound, so the fee rate paid is at least the one asked for.
    assert!(signed.vsize() as u64 <= built.estimated_vsize_vb);
    assert!(built.fee.to_sat() >= 10 * signed.vsize() as u64);

    // The same transaction with its payment edited no longer verifies; the first input is named.
    let mut edited = signed.clone();
    edited.output[0].value = Amount::from_sat(149_000);
    assert!(matches!(verify_spend(&edited, &prevouts), Err(ConsensusError::Script { input: 0, .. })));
    let error = verify_spend(&edited, &prevouts).unwrap_err().to_string();
    assert!(error.contains("input 0"), "{error}");

    // A taproot prevout cannot be checked by this libbitcoinconsensus: refused, not passed unchecked.
    let mut taproot = prevouts.clone();
    let mut p2tr = vec![0x51, 0x20];
    p2tr.extend_from_slice(&[0x11; 32]);
    taproot[1].script_pubkey = ScriptBuf::from_bytes(p2tr);
    assert_eq!(verify_spend(&signed, &taproot), Err(ConsensusError::TaprootUnsupported { input: 1 }));
}

#[test]
fn m9_dust_change_goes_to_fee() {
    let (master, account) = regtest_wallet();
    let utxos = vec![utxo(&account, 7, Keychain::Receive, 1, 100_000)];
    let destination = foreign_destination();
    // 310 sat left over: enough for the fee without a change output (~110 vB at 1 sat/vB), but with one
    // the change would be ~170 sat, below the 294-sat P2WPKH dust limit.
    let request = WithdrawalRequest {
        destination: &destination,
        amount: Amount::from_sat(99_690),
        fee_rate_sat_per_vb: 1,
        change_index: 0,
    };
    let built = build_withdrawal(&account, &utxos, &request).unwrap();
    assert_eq!(built.change, None);
    assert_eq!(built.psbt.unsigned_tx.output.len(), 1);
    assert_eq!(built.fee, Amount::from_sat(310));
    assert!(built.fee.to_sat() >= built.estimated_vsize_vb);
    let (signed, prevouts) = sign_and_extract(&master, &built);
    verify_spend(&signed, &prevouts).unwrap();
}

#[test]
fn m9_withdrawal_errors_name_the_reason() {
    let (_, account) = regtest_wallet();
    let destination = foreign_destination();
    let request = |sat: u64, rate: u64| WithdrawalRequest {
        destination: &destination,
        amount: Amount::from_sat(sat),
        fee_rate_sat_per_vb: rate,
        change_index: 0,
    };
    let two = vec![utxo(&account, 1, Keychain::Receive, 0, 50_000), utxo(&account, 2, Keychain::Receive, 1, 30_000)];

    let err = build_withdrawal(&account, &two, &request(100_000, 2)).unwrap_err();
    assert!(matches!(err, PsbtBuildError::InsufficientFunds { available_sat: 80_000, .. }), "{err}");
    assert!(err.to_string().contains("insufficient funds"));

    let err = build_withdrawal(&account, &two, &request(100, 2)).unwrap_err();
    assert!(matches!(err, PsbtBuildError::PaymentIsDust { amount_sat: 100, dust_limit_sat: 294 }), "{err}");

    for rate in [0, 1_000_000] {
        let err = build_withdrawal(&account, &two, &request(10_000, rate)).unwrap_err();
        assert!(matches!(err, PsbtBuildError::FeeRateOutOfRange(r) if r == rate), "{err}");
    }

    // More inputs needed than one withdrawal may have, although the funds are there.
    let many: Vec<SpendableUtxo> = (0..110u32)
        .map(|i| {
            let mut u = utxo(&account, 0, Keychain::Receive, i, 10_000);
            u.outpoint = OutPoint { txid: Txid::from_byte_array([9; 32]), vout: i };
            u
        })
        .collect();
    assert_eq!(MAX_INPUTS, 100);
    let err = build_withdrawal(&account, &many, &request(1_005_000, 1)).unwrap_err();
    assert!(matches!(err, PsbtBuildError::TooManyInputs), "{err}");
    // A payment that 100 of them do cover is fine.
    let built = build_withdrawal(&account, &many, &request(900_000, 1)).unwrap();
    assert!(built.psbt.unsigned_tx.input.len() <= MAX_INPUTS);

    // A mainnet destination for a regtest wallet.
    let mainnet = Address::from_str("bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu").unwrap().assume_checked();
    let wrong = WithdrawalRequest { destination: &mainnet, ..request(10_000, 2) };
    assert!(matches!(build_withdrawal(&account, &two, &wrong), Err(PsbtBuildError::WrongNetwork(_))));

    // A UTXO whose script is not ours at the path it claims.
    let mut lying = two.clone();
    lying[1].index = 2;
    let err = build_withdrawal(&account, &lying, &request(10_000, 2)).unwrap_err();
    assert!(matches!(err, PsbtBuildError::ForeignUtxo { index: 2, .. }), "{err}");

    let doubled = vec![two[0].clone(), two[0].clone()];
    assert!(matches!(build_withdrawal(&account, &doubled, &request(10_000, 2)), Err(PsbtBuildError::DuplicateUtxo(_))));
}

#[test]
fn c5_rbf_bump_raises_the_fee_from_the_change_and_verifies() {
    let (master, account) = regtest_wallet();
    let utxos = vec![utxo(&account, 1, Keychain::Receive, 0, 80_000), utxo(&account, 2, Keychain::Receive, 1, 60_000)];
    let destination = foreign_destination();
    let request = WithdrawalRequest {
        destination: &destination,
        amount: Amount::from_sat(100_000),
        fee_rate_sat_per_vb: 2,
        change_index: 4,
    };
    let original = build_withdrawal(&account, &utxos, &request).unwrap();
    let original_change = original.change.unwrap();

    let bumped = build_fee_bump(&account, &original.psbt, 20).unwrap();
    let (old_tx, new_tx) = (&original.psbt.unsigned_tx, &bumped.psbt.unsigned_tx);
    // Same inputs (so the two conflict and only one can ever confirm), same payment.
    assert_eq!(bumped.spent_outpoints(), original.spent_outpoints());
    assert!(new_tx.input.iter().all(|i| i.sequence == RBF_SEQUENCE));
    assert_eq!(new_tx.output[0], old_tx.output[0]);
    assert_ne!(new_tx.compute_txid(), old_tx.compute_txid());
    // BIP125: higher absolute fee, paying for its own relay, and a higher fee rate.
    let vsize = bumped.estimated_vsize_vb;
    assert_eq!(vsize, original.estimated_vsize_vb);
    assert!(bumped.fee >= original.fee + Amount::from_sat(vsize));
    assert_eq!(bumped.fee, Amount::from_sat(20 * vsize));
    // The extra fee comes out of the change, which still goes to the same address of ours.
    let change = bumped.change.unwrap();
    assert_eq!((change.vout, change.index), (original_change.vout, original_change.index));
    assert_eq!(change.value, original_change.value - (bumped.fee - original.fee));
    assert_eq!(new_tx.output[1].script_pubkey, old_tx.output[1].script_pubkey);
    assert!(bumped.psbt.inputs.iter().all(|i| i.partial_sigs.is_empty() && i.witness_utxo.is_some()));

    let (signed, prevouts) = sign_and_extract(&master, &bumped);
    verify_spend(&signed, &prevouts).unwrap();

    // Not a bump: the same fee rate.
    let err = build_fee_bump(&account, &original.psbt, 2).unwrap_err();
    assert!(matches!(err, PsbtBuildError::BumpNotHigher { .. }), "{err}");
}

#[test]
fn c5_rbf_bump_drops_dust_change_or_refuses_when_change_cannot_pay() {
    let (master, account) = regtest_wallet();
    let utxos = vec![utxo(&account, 5, Keychain::Receive, 3, 100_000)];
    let destination = foreign_destination();
    let request = WithdrawalRequest {
        destination: &destination,
        amount: Amount::from_sat(99_000),
        fee_rate_sat_per_vb: 1,
        change_index: 9,
    };
    let original = build_withdrawal(&account, &utxos, &request).unwrap();
    let change = original.change.expect("~860 sat of change");
    assert_eq!(original.fee + change.value, Amount::from_sat(1_000));

    // 8 sat/vB: the reduced change would be dust, so it goes; all 1 000 sat become fee.
    let bumped = build_fee_bump(&account, &original.psbt, 8).unwrap();
    assert_eq!(bumped.change, None);
    assert_eq!(bumped.psbt.unsigned_tx.output.len(), 1);
    assert_eq!(bumped.fee, Amount::from_sat(1_000));
    let (signed, prevouts) = sign_and_extract(&master, &bumped);
    verify_spend(&signed, &prevouts).unwrap();

    // 20 sat/vB needs more than the whole change: refused, with the reason.
    let err = build_fee_bump(&account, &original.psbt, 20).unwrap_err();
    assert!(matches!(err, PsbtBuildError::BumpInsufficientChange { .. }), "{err}");
    assert!(err.to_string().contains("CPFP"));
}
