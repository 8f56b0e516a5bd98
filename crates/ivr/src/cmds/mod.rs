pub mod bench;
pub mod bench_cluster;
pub mod bench_cvip;
pub mod bench_edge;
pub mod bench_ivc;
pub mod bench_live;
pub mod bench_media;
pub mod bench_recording;
pub mod bench_soak;
pub mod bench_streams;
pub mod cloud;
pub mod cloud_call;
pub mod cvip;
pub mod demo;
pub mod dvrip;
pub mod edge;
pub mod media;
pub mod sim;
pub mod users;

/// Raises this process's open-file limit to its hard limit (servers and
/// fleets hold one descriptor per connection); returns the limit now in
/// force.
pub fn raise_fd_limit() -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    l.rlim_cur
}
