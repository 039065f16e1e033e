//! AFL++ binary of the `proto_requests` target (see `keyward_fuzz::proto_requests`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::proto_requests::run(data));
}
