//! AFL++ binary of the `kms_pkcs11` target (see `keyward_fuzz::kms_pkcs11`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::kms_pkcs11::run(data));
}
