//! AFL++ binary of the `kms_azure` target (see `keyward_fuzz::kms_azure`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::kms_azure::run(data));
}
