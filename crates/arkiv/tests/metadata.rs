//! What a file is besides its bytes comes back too: permissions, times,
//! links, empty directories, extended attributes, holes and names that are
//! not UTF-8.

mod common;

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Sets atime and mtime of `p` itself (not a symlink's target) to the
/// nanosecond.
fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let ts = [libc::timespec { tv_sec: sec, tv_nsec: nsec }, libc::timespec { tv_sec: sec, tv_nsec: nsec }];
    let c = cpath(p);
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}: {}", p.display(), std::io::Error::last_os_error());
}

fn mtime_ns(p: &Path) -> (i64, i64) {
    let md = fs::symlink_metadata(p).unwrap();
    (md.mtime(), md.mtime_nsec())
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn permissions_including_odd_modes_round_trip() {
    let s = Scratch::new();
    let src = s.join("src");
    let modes = [
        ("odd", 0o751),
        ("private", 0o600),
        ("readonly", 0o444),
        ("setuid", 0o4755),
        ("setgid-sticky", 0o3710),
        ("nothing", 0o000),
    ];
    for (name, m) in modes {
        write_file(src.join(name), name.as_bytes());
        chmod(&src.join(name), m);
    }
    // A read-only directory with a file inside: its mode must be set after
    // its contents are written.
    write_file(src.join("locked/inside"), b"inside");
    chmod(&src.join("locked"), 0o555);
    fs::create_dir(src.join("odd-dir")).unwrap();
    chmod(&src.join("odd-dir"), 0o751);

    let id = s.backup(&[src.as_os_str()]);
    let t = s.restore(&id, "out");
    let dst = restored(&t, &src);
    for (name, m) in modes {
        assert_eq!(mode(&dst.join(name)), m, "mode of {name}");
    }
    assert_eq!(mode(&dst.join("locked")), 0o555);
    assert_eq!(mode(&dst.join("odd-dir")), 0o751);
    assert_eq!(fs::read(dst.join("locked/inside")).unwrap(), b"inside");
    assert_eq!(mode(&dst), mode(&src));
    // Let the temporary directory be removed.
    chmod(&dst.join("locked"), 0o755);
    chmod(&src.join("locked"), 0o755);
}

#[test]
fn mtimes_of_files_directories_and_symlinks_round_trip_to_the_nanosecond() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("dir/file"), b"data");
    std::os::unix::fs::symlink("file", src.join("dir/link")).unwrap();
    write_file(src.join("old"), b"old");
    set_mtime(&src.join("dir/file"), 1_600_000_000, 123_456_789);
    set_mtime(&src.join("dir/link"), 1_500_000_000, 987_654_321);
    set_mtime(&src.join("old"), 0, 1);
    set_mtime(&src.join("dir"), 1_700_000_000, 555_555_555);
    set_mtime(&src, 1_650_000_000, 42);
    // The file system must keep nanoseconds for this test to mean anything.
    assert_eq!(mtime_ns(&src.join("dir/file")), (1_600_000_000, 123_456_789));

    let id = s.backup(&[src.as_os_str()]);
    let t = s.restore(&id, "out");
    let dst = restored(&t, &src);
    for rel in ["dir/file", "dir/link", "old", "dir", ""] {
        let (a, b) = (src.join(rel), dst.join(rel));
        assert_eq!(mtime_ns(&b), mtime_ns(&a), "mtime of '{rel}'");
    }
    assert_eq!(mtime_ns(&dst.join("dir/link")), (1_500_000_000, 987_654_321));
    assert_eq!(mtime_ns(&dst), (1_650_000_000, 42));
}

#[test]
fn symlinks_round_trip_with_their_targets_even_dangling_or_absolute() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("real"), b"real");
    fs::create_dir_all(src.join("d")).unwrap();
    let links = [
        ("rel", "real"),
        ("up", "../src/real"),
        ("abs", "/etc/hostname"),
        ("dangling", "does/not/exist"),
        ("to-dir", "d"),
        ("d/back", ".."),
    ];
    for (name, target) in links {
        std::os::unix::fs::symlink(target, src.join(name)).unwrap();
    }
    let id = s.backup(&[src.as_os_str()]);
    let t = s.restore(&id, "out");
    let dst = restored(&t, &src);
    for (name, target) in links {
        let p = dst.join(name);
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink(), "{name} is not a symlink");
        assert_eq!(fs::read_link(&p).unwrap(), Path::new(target), "{name}");
    }
    assert_same_tree(&src, &dst);
}

#[test]
fn hard_links_restore_as_one_inode() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("a/original"), &random_bytes(3, 70_000));
    fs::create_dir_all(src.join("b")).unwrap();
    fs::hard_link(src.join("a/original"), src.join("b/link1")).unwrap();
    fs::hard_link(src.join("a/original"), src.join("link2")).unwrap();
    write_file(src.join("separate"), &random_bytes(3, 70_000));
    let id = s.backup(&[src.as_os_str()]);

    let out = s.json(&["restore", &id, "--target", &s.join("out").display().to_string()]);
    assert_eq!(out["result"]["hardlinks"], 2);
    let dst = restored(&s.join("out"), &src);
    let ino = |p: &str| fs::metadata(dst.join(p)).unwrap().ino();
    assert_eq!(ino("a/original"), ino("b/link1"));
    assert_eq!(ino("a/original"), ino("link2"));
    assert_ne!(ino("a/original"), ino("separate"), "same bytes, not a link");
    assert_eq!(fs::metadata(dst.join("link2")).unwrap().nlink(), 3);
    assert_same_tree(&src, &dst);
}

#[test]
fn empty_directories_round_trip() {
    let s = Scratch::new();
    let src = s.join("src");
    fs::create_dir_all(src.join("empty")).unwrap();
    fs::create_dir_all(src.join("nested/empty/deeper")).unwrap();
    write_file(src.join("file"), b"f");
    let id = s.backup(&[src.as_os_str()]);
    let t = s.restore(&id, "out");
    let dst = restored(&t, &src);
    assert!(dst.join("empty").is_dir());
    assert!(dst.join("nested/empty/deeper").is_dir());
    assert_eq!(fs::read_dir(dst.join("empty")).unwrap().count(), 0);
    assert_same_tree(&src, &dst);

    // A source that is itself an empty directory.
    let lone = s.join("lone");
    fs::create_dir(&lone).unwrap();
    let id = s.backup(&[lone.as_os_str()]);
    let t = s.restore(&id, "out2");
    assert!(restored(&t, &lone).is_dir());
    assert_eq!(fs::read_dir(restored(&t, &lone)).unwrap().count(), 0);
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr() as *const libc::c_void, value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: as above; the buffer is writable for its length.
    let rc = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

#[test]
fn user_xattrs_on_files_and_directories_round_trip() {
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("file"), b"with attributes");
    fs::create_dir_all(src.join("dir")).unwrap();
    let binary: Vec<u8> = (0..=255u8).collect();
    match set_xattr(&src.join("file"), "user.comment", b"hello xattr") {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            eprintln!("skipping: the temporary directory's file system has no user xattrs");
            return;
        }
        Err(e) => panic!("setting an xattr failed: {e}"),
    }
    set_xattr(&src.join("file"), "user.binary", &binary).unwrap();
    set_xattr(&src.join("file"), "user.empty", b"").unwrap();
    set_xattr(&src.join("dir"), "user.dir", b"on a directory").unwrap();

    let id = s.backup(&[src.as_os_str()]);
    let t = s.restore(&id, "out");
    let dst = restored(&t, &src);
    assert_eq!(get_xattr(&dst.join("file"), "user.comment").as_deref(), Some(&b"hello xattr"[..]));
    assert_eq!(get_xattr(&dst.join("file"), "user.binary"), Some(binary));
    assert_eq!(get_xattr(&dst.join("file"), "user.empty").as_deref(), Some(&b""[..]));
    assert_eq!(get_xattr(&dst.join("dir"), "user.dir").as_deref(), Some(&b"on a directory"[..]));
    assert_eq!(get_xattr(&dst.join("file"), "user.absent"), None);
}

#[test]
fn a_sparse_file_comes_back_sparse_with_identical_bytes() {
    let s = Scratch::new();
    let src = s.join("src");
    fs::create_dir_all(&src).unwrap();
    let path = src.join("disk.img");
    const SIZE: u64 = 64 << 20;
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(&path).unwrap();
        f.set_len(SIZE).unwrap();
        f.write_all_at(&random_bytes(11, 4096), 0).unwrap();
        f.write_all_at(&random_bytes(12, 4096), 40 << 20).unwrap();
        f.write_all_at(b"end", SIZE - 3).unwrap();
    }
    let blocks_src = fs::metadata(&path).unwrap().blocks() * 512;
    assert!(blocks_src < 1 << 20, "the source file system does not keep holes ({blocks_src} bytes allocated)");
    let id = s.backup(&[src.as_os_str()]);
    let t = s.restore(&id, "out");
    let back = restored(&t, &src).join("disk.img");
    let md = fs::metadata(&back).unwrap();
    assert_eq!(md.len(), SIZE);
    let allocated = md.blocks() * 512;
    // Only the 4 KiB blocks holding data are written, so the restored file
    // is about as sparse as the source; the zero runs between stay holes.
    assert!(
        allocated <= blocks_src + (64 << 10),
        "restored file has {allocated} bytes allocated, the source {blocks_src}: holes were filled"
    );
    assert!(fs::read(&back).unwrap() == fs::read(&path).unwrap(), "bytes differ");
}

#[test]
fn non_utf8_file_names_and_link_targets_round_trip() {
    let s = Scratch::new();
    let src = s.join("src");
    fs::create_dir_all(&src).unwrap();
    let latin1 = OsStr::from_bytes(b"caf\xe9.txt");
    let dir = OsStr::from_bytes(b"dir-\xff\xfe");
    let inner = OsStr::from_bytes(b"\x80\x81 inner");
    let link = OsStr::from_bytes(b"link-\xc3\x28");
    write_file(src.join(latin1), b"latin-1 name");
    write_file(src.join(dir).join(inner), b"inner");
    std::os::unix::fs::symlink(latin1, src.join(link)).unwrap();
    // Two names that differ only in invalid bytes stay two files.
    write_file(src.join(OsStr::from_bytes(b"x\xfe")), b"fe");
    write_file(src.join(OsStr::from_bytes(b"x\xff")), b"ff");

    let id = s.backup(&[src.as_os_str()]);
    let t = s.restore(&id, "out");
    let dst = restored(&t, &src);
    assert_eq!(fs::read(dst.join(latin1)).unwrap(), b"latin-1 name");
    assert_eq!(fs::read(dst.join(dir).join(inner)).unwrap(), b"inner");
    assert_eq!(fs::read_link(dst.join(link)).unwrap().as_os_str(), latin1);
    assert_eq!(fs::read(dst.join(OsStr::from_bytes(b"x\xfe"))).unwrap(), b"fe");
    assert_eq!(fs::read(dst.join(OsStr::from_bytes(b"x\xff"))).unwrap(), b"ff");
    assert_same_tree(&src, &dst);
}

#[test]
fn owner_and_group_round_trip_when_restoring_as_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: only root can give files away");
        return;
    }
    let s = Scratch::new();
    let src = s.join("src");
    write_file(src.join("owned"), b"owned");
    std::os::unix::fs::symlink("owned", src.join("link")).unwrap();
    let chown = |p: &Path, uid: u32, gid: u32| {
        let c = cpath(p);
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, gid) }, 0);
    };
    chown(&src.join("owned"), 1234, 5678);
    chown(&src.join("link"), 4321, 8765);
    chmod(&src.join("owned"), 0o4750);
    let id = s.backup(&[src.as_os_str()]);
    let t = s.restore(&id, "out");
    let dst = restored(&t, &src);
    let md = fs::metadata(dst.join("owned")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(md.mode() & 0o7777, 0o4750, "chown must not clear setuid");
    let md = fs::symlink_metadata(dst.join("link")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4321, 8765));
}

#[test]
fn a_symlinked_directory_above_a_backed_up_path_comes_back_as_the_directory_it_points_to() {
    let s = Scratch::new();
    let src = s.join("src");
    // As /lib → usr/lib on a merged-usr system: the path given goes through
    // a symlink, whose own mode is 0777.
    write_file(src.join("real/inner/file"), b"through the link");
    chmod(&src.join("real"), 0o750);
    std::os::unix::fs::symlink("real", src.join("link-to-real")).unwrap();
    let id = s.backup(&[src.join("link-to-real/inner")]);
    let t = s.restore(&id, "out");

    let dir = restored(&t, &src.join("link-to-real"));
    let md = fs::symlink_metadata(&dir).unwrap();
    assert!(md.is_dir(), "{} is not a directory", dir.display());
    assert_eq!(mode(&dir), 0o750, "restored with mode {:o}", mode(&dir));
    assert_eq!(fs::read(dir.join("inner/file")).unwrap(), b"through the link");
}
