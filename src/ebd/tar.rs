//! The plain ustar archives EBD packages travel in: a bounded reader for what arrives and a writer
//! for what this node sends.
//!
//! The reader never trusts a declared size: a member must fit in the bytes actually received, the
//! member count and name length are bounded, and only flat regular files are accepted (no
//! directories, links, device files or names with a path in them), so nothing in a package can name
//! a place on disk. Nothing is written anywhere; members are slices of the received bytes.

const BLOCK: usize = 512;
/// More members than any real package has (EBDB, EBDS and a few resources).
pub const MAX_MEMBERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error("not a tar archive: {0}")]
    NotTar(&'static str),
    #[error("the member `{0}` is not a plain file in the archive's top level")]
    NotPlainFile(String),
    #[error("the member `{name}` declares {declared} bytes but the archive ends before that")]
    Truncated { name: String, declared: u64 },
    #[error("more than {MAX_MEMBERS} members")]
    TooManyMembers,
    #[error("two members are named `{0}`")]
    Duplicate(String),
}

/// One member: its name, its bytes, and where they start in the archive (so a caller holding the
/// archive as shared bytes can keep a member without copying it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    pub name: String,
    pub bytes: &'a [u8],
    pub offset: usize,
}

fn octal(field: &[u8]) -> Option<u64> {
    let text = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ');
    let mut value: u64 = 0;
    let mut any = false;
    for b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

fn text(field: &[u8]) -> Result<String, TarError> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec()).map_err(|_| TarError::NotTar("a name is not UTF-8"))
}

/// A member name that names a file in the archive's top level and nothing else.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.contains(['/', '\\', '\0'])
        && name != "."
        && name != ".."
        && !name.chars().any(char::is_control)
}

/// The members of `archive`, in order.
pub fn read(archive: &[u8]) -> Result<Vec<Member<'_>>, TarError> {
    if archive.len() < BLOCK {
        return Err(TarError::NotTar("shorter than one header"));
    }
    let mut members: Vec<Member<'_>> = Vec::new();
    let mut at = 0usize;
    // Archives cut right after the last member (without the two zero blocks) occur: the loop
    // ends at the end of the bytes as at the zero block.
    while let Some(header) = archive.get(at..at + BLOCK) {
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let stored = octal(&header[148..156]).ok_or(TarError::NotTar("no header checksum"))?;
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        if sum != stored {
            return Err(TarError::NotTar("a header checksum is wrong"));
        }
        let mut name = text(&header[0..100])?;
        if &header[257..262] == b"ustar" {
            let prefix = text(&header[345..500])?;
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let size = octal(&header[124..136]).ok_or(TarError::NotTar("a member has no size"))?;
        let kind = header[156];
        if !matches!(kind, b'0' | 0) || !plain_name(&name) {
            return Err(TarError::NotPlainFile(name.chars().take(100).collect()));
        }
        let start = at + BLOCK;
        let available = (archive.len() - start) as u64;
        if size > available {
            return Err(TarError::Truncated {
                name,
                declared: size,
            });
        }
        // `size <= available`, which is a usize.
        let size = size as usize;
        if members.iter().any(|m| m.name == name) {
            return Err(TarError::Duplicate(name));
        }
        if members.len() == MAX_MEMBERS {
            return Err(TarError::TooManyMembers);
        }
        members.push(Member {
            name,
            bytes: &archive[start..start + size],
            offset: start,
        });
        at = start + size.div_ceil(BLOCK) * BLOCK;
    }
    if members.is_empty() {
        return Err(TarError::NotTar("no members"));
    }
    Ok(members)
}

fn put_octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let digits = format!("{value:0width$o}");
    field[..width].copy_from_slice(&digits.as_bytes()[digits.len() - width..]);
    field[width] = 0;
}

/// A ustar archive of `members` (flat, mode 0644, all with `mtime_s`), as the platforms write them.
pub fn write(members: &[(&str, &[u8])], mtime_s: u64) -> Vec<u8> {
    let total: usize = members
        .iter()
        .map(|(_, b)| BLOCK + b.len().div_ceil(BLOCK) * BLOCK)
        .sum();
    let mut out = Vec::with_capacity(total + 2 * BLOCK);
    for (name, bytes) in members {
        let mut header = [0u8; BLOCK];
        let name = name.as_bytes();
        let n = name.len().min(100);
        header[..n].copy_from_slice(&name[..n]);
        put_octal(&mut header[100..108], 0o644);
        put_octal(&mut header[108..116], 0);
        put_octal(&mut header[116..124], 0);
        put_octal(&mut header[124..136], bytes.len() as u64);
        put_octal(&mut header[136..148], mtime_s);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
        let digits = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(digits.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(bytes);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(name: &str, size_field: &[u8], kind: u8) -> Vec<u8> {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..124 + size_field.len()].copy_from_slice(size_field);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h.to_vec()
    }

    #[test]
    fn what_is_written_reads_back_member_for_member() {
        let big = vec![7u8; 1500];
        let tar = write(
            &[("EBDB_1.xml", b"<EBD/>"), ("EBDR_a.mp3", &big)],
            1_700_000_000,
        );
        assert_eq!(tar.len() % BLOCK, 0);
        let members = read(&tar).expect("read");
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].name, "EBDB_1.xml");
        assert_eq!(members[0].bytes, b"<EBD/>");
        assert_eq!(members[1].bytes, big.as_slice());
        let at = members[1].offset;
        assert_eq!(&tar[at..at + big.len()], big.as_slice());
    }

    #[test]
    fn python_tarfile_reads_what_this_writes_and_this_reads_what_it_writes() {
        let Ok(out) = std::process::Command::new("python3")
            .args([
                "-c",
                "import io,sys,tarfile\n\
                 data=sys.stdin.buffer.read()\n\
                 t=tarfile.open(fileobj=io.BytesIO(data))\n\
                 names=[(m.name,m.size,m.mode) for m in t.getmembers()]\n\
                 b=io.BytesIO()\n\
                 w=tarfile.open(fileobj=b,mode='w',format=tarfile.USTAR_FORMAT)\n\
                 i=tarfile.TarInfo('EBDS_EBDB_9.xml');i.size=3\n\
                 w.addfile(i,io.BytesIO(b'abc'));w.close()\n\
                 sys.stdout.buffer.write(repr(names).encode()+b'\\n'+b.getvalue())",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(&write(&[("EBDB_9.xml", b"hello")], 0))?;
                }
                child.wait_with_output()
            })
        else {
            eprintln!("python3 is not here; skipped");
            return;
        };
        let split = out.stdout.iter().position(|b| *b == b'\n').expect("line");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout[..split]),
            "[('EBDB_9.xml', 5, 420)]"
        );
        let members = read(&out.stdout[split + 1..]).expect("python's tar");
        assert_eq!(members[0].name, "EBDS_EBDB_9.xml");
        assert_eq!(members[0].bytes, b"abc");
    }

    #[test]
    fn hostile_archives_are_refused() {
        assert!(matches!(read(b"<EBD/>"), Err(TarError::NotTar(_))));
        assert!(matches!(read(&[0u8; 2048]), Err(TarError::NotTar(_))));
        // A 2 GB declared member in a few hundred bytes.
        let mut huge = header("EBDR_x.mp3", b"17777777777", b'0');
        huge.extend_from_slice(&[0u8; 600]);
        assert!(matches!(read(&huge), Err(TarError::Truncated { .. })));
        // A size field that overflows u64.
        let mut overflow = header("a", b"77777777777", b'0');
        overflow[124..136].copy_from_slice(b"777777777777");
        assert!(read(&overflow).is_err());
        for (name, kind) in [
            ("../../etc/passwd", b'0'),
            ("/etc/passwd", b'0'),
            ("dir/EBDB_1.xml", b'0'),
            ("EBDB_1.xml", b'2'),
            ("EBDB_1.xml", b'1'),
            ("EBDB_1.xml", b'5'),
            ("..", b'0'),
        ] {
            let mut tar = header(name, b"00000000000", kind);
            tar.extend_from_slice(&[0u8; 1024]);
            assert!(
                matches!(read(&tar), Err(TarError::NotPlainFile(_))),
                "{name} {kind}"
            );
        }
        let dup = write(&[("EBDB_1.xml", b"a"), ("EBDB_1.xml", b"b")], 0);
        assert!(matches!(read(&dup), Err(TarError::Duplicate(_))));
        let many: Vec<(String, Vec<u8>)> = (0..=MAX_MEMBERS)
            .map(|i| (format!("EBDR_{i}"), vec![1u8]))
            .collect();
        let refs: Vec<(&str, &[u8])> = many
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        assert!(matches!(
            read(&write(&refs, 0)),
            Err(TarError::TooManyMembers)
        ));
        let mut bad_sum = write(&[("EBDB_1.xml", b"a")], 0);
        bad_sum[0] = b'X';
        assert!(matches!(read(&bad_sum), Err(TarError::NotTar(_))));
    }

    proptest! {
        #[test]
        fn garbage_and_cut_archives_never_panic(
            noise in proptest::collection::vec(any::<u8>(), 0..3000),
            cut in 0usize..4000,
            flip in 0usize..4000,
        ) {
            let _ = read(&noise);
            let mut tar = write(&[("EBDB_1.xml", b"<EBD/>"), ("EBDR_2.mp3", &noise)], 5);
            let at = flip % tar.len();
            tar[at] ^= 0xff;
            let _ = read(&tar);
            tar.truncate(cut.min(tar.len()));
            let _ = read(&tar);
        }
    }
}
