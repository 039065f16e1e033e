//! AFL++ binary of the `kms_aws` target (see `keyward_fuzz::kms_aws`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::kms_aws::run(data));
}
