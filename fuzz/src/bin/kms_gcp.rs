//! AFL++ binary of the `kms_gcp` target (see `keyward_fuzz::kms_gcp`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::kms_gcp::run(data));
}
