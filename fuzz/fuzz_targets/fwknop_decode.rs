//! Fuzz the fwknop decoder: cheap checks, HMAC, and (skipping the HMAC, as
//! only a key holder could) decryption and field parsing must never panic.
#![no_main]

use knockgate_proto::fwknop::{self, DigestType, FwknopKeys, FwknopPacket, PreparedKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = FwknopKeys {
        enc_key: b"fwknoptest".to_vec(),
        hmac_key: b"hmactest".to_vec(),
        hmac: DigestType::Sha256,
    };
    let _ = fwknop::decode(&keys, data);
    let _ = fwknop::replay_digest(data);
    if let (Ok(packet), Ok(prepared)) = (FwknopPacket::parse(data), PreparedKeys::new(&keys)) {
        let _ = packet.salt();
        let _ = prepared.decrypt(&packet);
    }
});
