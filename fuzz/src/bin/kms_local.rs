//! AFL++ binary of the `kms_local` target (see `keyward_fuzz::kms_local`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::kms_local::run(data));
}
