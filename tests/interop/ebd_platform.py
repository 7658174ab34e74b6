#!/usr/bin/env python3
"""An independent "upper platform" (county emergency-broadcast platform, 县级应急广播平台) for interop
tests and benchmarks of the node's EBD interface (GD/J 079-083-2018 style, see
/work/shared/conformance/ebd/README.md). Python 3.11, standard library + gmssl only.

Protocol as this tool implements it
-----------------------------------
Transport. One EBD package = one uncompressed POSIX ustar archive ("EBDT_<EBDID>.tar"), flat,
members mode 0644, uid/gid 0, empty uname/gname, one common mtime, in the order
    EBDB_<EBDID>.xml         business data (UTF-8, no BOM)
    EBDR_<uuid>.mp3          optional resources (named in EBM/MsgContent/Auxiliary/AuxiliaryDesc)
    EBDS_EBDB_<EBDID>.xml    signature of the EBDB (absent for unsigned packages)
It is POSTed as multipart/form-data with one part
    Content-Disposition: form-data; name="file"; filename="EBDT_<EBDID>.tar"
    Content-Type: application/octet-stream
The receiver answers in the same connection with the receipt (接收回执): HTTP 200,
Content-Type: application/x-tar, Content-Disposition: attachment;filename="EBDT_<id>.tar", body =
a tar holding an EBDResponse EBDB (+ EBDS) whose RelatedEBD/EBDID is the received EBDID and whose
EBDResponse/ResultCode is 1 (ok), 2 (parse failure), 3 (content missing), 4 (signature failure),
5 (other). Business answers (EBMStateResponse, reports) come later as new POSTs the other way.

EBDB. Root <EBD xmlns:xs="http://www.w3.org/2001/XMLSchema"> (no default namespace), children in
the order EBDVersion, EBDID, EBDType, SRC{EBRID, URL?}, DEST{EBRID}?, EBDTime, RelatedEBD{EBDID}?,
then one body element named like EBDType. Times are "YYYY-MM-DD hh:mm:ss" in UTC+8 whatever the
machine's time zone. Ids (2018 generation): EBRID 23 digits; EBDID = "10" + EBRID + 16 digits
(here: microseconds since the epoch, forced strictly increasing within a process); EBMID = EBRID +
YYYYMMDD + 4-digit sequence.
    EBM             EBMVersion=1, EBMID, RelatedInfo{EBMID}?, MsgBasicInfo{MsgType, SenderName,
                    SenderCode, SendTime (or SentTime), EventType=11000, Severity, StartTime,
                    EndTime}, MsgContent{LanguageCode=zho, MsgTitle, MsgDesc, AreaCode (codes joined
                    by ","), Auxiliary{AuxiliaryType=2, AuxiliaryDesc=<member name>, Size, Digest?}*}
    EBMStateRequest EBM{EBMID}
    OMDRequest      OMDType, Params{RptStartTime, RptEndTime, RptType=Full}
    EBDResponse     ResultCode, ResultDesc

EBDS (2018 element set): <Signature> Version=1, RelatedEBD{EBDID}, CertSN (signer cert SN, 12 hex
digits), SignatureAlgorithm=SM2-SM3, SignatureValue. Only SignatureValue matters:
    SignatureValue = Base64( C[4] || CertSN[6] || r[32] || s[32] )
C is a 4-byte big-endian counter (by default above the key's last one and at least Unix seconds); the signed message is the exact
EBDB file bytes followed by the 4 bytes of C; SM2 signature with SM3 and Z_A computed with the
default user id "1234567812345678" (ENTL 0x0080); r, s raw big-endian (not DER).

Certificates (143 bytes): 0x10 | issuerSN[6] | SN[6] | 0x45 0x10 | X[32] Y[32] | r[32] s[32],
(r, s) = the issuer's SM2-SM3 signature (same default id) over bytes 0..78.

Subcommands (run with -h for all options)
----------------------------------------
  selftest SAMPLES_DIR   verify the real Jiangsu samples (01/02 with cert 05; cert 05 with CA 06),
                         check that a one-bit change fails, plus local round trips; exit 0 iff all ok
  keys DIR [--force]     test CA (SN 000000000001, self-signed), platform (SN 00000000abcd, issued by
                         the CA) and rogue (SN 00000000bad1, self-signed) keys and certs; reuses
                         valid existing files unless --force; prints one JSON line with the paths
  serve                  the platform's receive URL: logs every POST to --events, answers receipts;
                         prints "ready <port>" once listening
  send                   build, sign and POST one EBM; prints one JSON line (see result_json())
  send-state-request     EBMStateRequest for --ebmid
  send-omd               OMDRequest for --omd-type
  send-raw               POST an arbitrary file as the multipart file part (hostile input tests)
serve: every POST (any path) is answered 200 with a signed EBDResponse receipt: ResultCode 1 if the
EBDS verifies against the X||Y key at bytes 15..78 of --node-cert (re-read at each request, may
appear later) or if the type is ConnectionCheck/EBDResponse (accepted signed or not, as most
receivers do); 4 otherwise (unsigned, bad or foreign signature); 2 if the post is malformed (no
tar part, not a tar, non-regular members, not exactly one EBDB, not XML, no EBDID/EBDType). A
non-multipart body is taken as the tar itself. Each POST appends one JSON line to --events:
  {"t_ns" (arrival), "path", "ebd_type", "ebdid", "related", "src", "src_url", "dest", "signed",
   "verified", "counter", "cert_sn", "body" (leaf tag -> text, repeated tags -> lists, e.g. a
   cancel's own and related EBMID), "resources" {name: size}, "xml", "result_code", "error"}
The send* commands exit 0 when an HTTP exchange took place (whatever the ResultCode), 1 when it
did not (connection refused, timeout), 2 on usage errors.

Library use (e.g. a benchmark sending 100 packages from one process):
    sys.path.insert(0, "tests/interop"); import ebd_platform as P
    signer = P.Signer.load(keys_dir)                       # platform.key + platform.cert
    pkg = P.make_ebm_package(signer, area="330723001000", src_url=...)
    res = P.post_package(node_url, pkg.tar, pkg.filename)  # -> HttpResult
    rcpt = P.verify_package(res.body, P.read_cert_pubkey(node_cert_path))
or simply P.send_package(node_url, pkg, node_cert_path) -> the dict `send` prints.

gmssl notes (3.2.2): CryptSM2 wants the public key as 128 hex digits X||Y. Its constructor strips
a "04" prefix with str.lstrip("04"), which also eats further leading '0'/'4' digits of X (and
fires when X itself begins with byte 0x04), so this tool always assigns .public_key after
construction. sign_with_sm3/verify_with_sm3 hash Z_A with the hard-coded default id
"1234567812345678". verify() does not range-check r, s (s = 0 is treated as 1) and crashes on the
point at infinity, so sm2_verify() checks ranges and the curve equation first. func.random_hex
uses the non-cryptographic `random` module, so nonces come from `secrets` instead.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import hashlib
import http.client
import http.server
import io
import json
import os
import re
import secrets
import signal
import ssl
import sys
import tarfile
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from gmssl import func, sm2, sm3

# ----------------------------------------------------------------------------------------------
# Constants

# Default platform EBRID: level 2, area 330723000000, resType 0101 (platform), subType 01, SNs 01.
DEFAULT_EBRID = "23307230000000101010101"
DEFAULT_AREA = "330723001000"
CA_SN = bytes.fromhex("000000000001")
PLATFORM_SN = bytes.fromhex("00000000abcd")
ROGUE_SN = bytes.fromhex("00000000bad1")
CERT_KIND = b"\x45\x10"  # bytes 13..14 of a cert; meaning unknown, copied from the Jiangsu sample
CERT_LEN = 143
CERT_TBS = 79  # the issuer signs bytes 0..78
TZ8 = dt.timezone(dt.timedelta(hours=8))  # the protocol's local time, independent of the machine
REQUEST_TIMEOUT = 20.0  # Jiangsu test plan: request timeout 20 s
MAX_BODY = 64 * 1024 * 1024  # refuse bigger posts/tars rather than exhaust memory
MAX_MEMBERS = 64
RESULT_DESC = {
    0: "收到数据未处理", 1: "接收解析及数据校验成功", 2: "接收解析失败", 3: "数据内容缺失",
    4: "签名验证失败", 5: "其他错误",
}
# Types that may arrive unsigned (GD/J 083: heartbeats and receipts need no EBDS).
UNSIGNED_OK = {"ConnectionCheck", "EBDResponse"}
HEADER_TAGS = {"EBDVersion", "EBDID", "EBDType", "SRC", "DEST", "EBDTime", "RelatedEBD"}

_ECC = sm2.default_ecc_table
_P = int(_ECC["p"], 16)
_A = int(_ECC["a"], 16)
_B = int(_ECC["b"], 16)
_N = int(_ECC["n"], 16)


class PackageError(Exception):
    """A received package that cannot be parsed (answered with ResultCode 2). ebdid (from the
    EBDB member's name) and xml are filled in when known, so the receipt and the event log can
    still say what was received."""

    def __init__(self, msg: str, ebdid: str | None = None, xml: str | None = None):
        super().__init__(msg)
        self.ebdid, self.xml = ebdid, xml


def log(msg: str) -> None:
    print(f"ebd_platform: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# SM2 / SM3 primitives (thin, defensive wrappers around gmssl)

def _crypt(pub_xy_hex: str, priv_hex: str | None = None) -> sm2.CryptSM2:
    c = sm2.CryptSM2(private_key=priv_hex, public_key="")
    # Assigned afterwards on purpose: the constructor's lstrip("04") can corrupt a valid key.
    c.public_key = pub_xy_hex.lower()
    return c


def pubkey_from_private(priv_hex: str) -> str:
    """X||Y (128 hex digits) of d*G."""
    c = _crypt("", priv_hex)
    return c._kg(int(priv_hex, 16), _ECC["g"])


def gen_keypair() -> tuple[str, str]:
    """(private key hex, public key X||Y hex); d uniform in [1, n-2] from `secrets`."""
    d = secrets.randbelow(_N - 2) + 1
    priv = "%064x" % d
    return priv, pubkey_from_private(priv)


def on_curve(pub_xy_hex: str) -> bool:
    if not re.fullmatch(r"[0-9a-fA-F]{128}", pub_xy_hex or ""):
        return False
    x, y = int(pub_xy_hex[:64], 16), int(pub_xy_hex[64:], 16)
    return x < _P and y < _P and (y * y - (x * x * x + _A * x + _B)) % _P == 0


def sm2_sign(priv_hex: str, pub_xy_hex: str, data: bytes) -> bytes:
    """64-byte r||s, SM2 with SM3 and the default id. The nonce comes from `secrets`."""
    c = _crypt(pub_xy_hex, priv_hex)
    while True:
        k = "%064x" % (secrets.randbelow(_N - 1) + 1)
        sig = c.sign_with_sm3(data, k)
        if sig:  # gmssl returns None for the (negligible) r = 0 / r + k = n / s = 0 cases
            return bytes.fromhex(sig)


def sm2_verify(pub_xy_hex: str, sig: bytes, data: bytes) -> bool:
    """True iff sig (64-byte r||s) is a valid SM2-SM3 signature of data under the given key."""
    if len(sig) != 64 or not on_curve(pub_xy_hex):
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (1 <= r < _N and 1 <= s < _N):
        return False  # gmssl would not reject these itself
    try:
        return bool(_crypt(pub_xy_hex).verify_with_sm3(sig.hex(), data))
    except Exception:  # point at infinity etc. make gmssl raise instead of returning False
        return False


def sm3_hex(data: bytes) -> str:
    """SM3 digest (lowercase hex). OpenSSL's via hashlib when present: gmssl's is pure Python and
    takes seconds for a 3 MB mp3."""
    try:
        return hashlib.new("sm3", data).hexdigest()
    except ValueError:
        return sm3.sm3_hash(func.bytes_to_list(data))


# ----------------------------------------------------------------------------------------------
# 143-byte certificates

@dataclass
class Cert:
    raw: bytes
    issuer_sn: bytes
    sn: bytes
    kind: bytes
    pub_xy_hex: str
    sig: bytes

    @classmethod
    def parse(cls, raw: bytes) -> "Cert":
        if len(raw) != CERT_LEN or raw[0] != 0x10:
            raise ValueError(f"not a 143-byte EBD certificate (len {len(raw)})")
        return cls(raw, raw[1:7], raw[7:13], raw[13:15], raw[15:79].hex(), raw[79:143])

    def signed_by(self, issuer_pub_xy_hex: str) -> bool:
        return sm2_verify(issuer_pub_xy_hex, self.sig, self.raw[:CERT_TBS])


def build_cert(issuer_sn: bytes, sn: bytes, pub_xy_hex: str, issuer_priv: str, issuer_pub: str) -> bytes:
    tbs = b"\x10" + issuer_sn + sn + CERT_KIND + bytes.fromhex(pub_xy_hex)
    assert len(tbs) == CERT_TBS
    return tbs + sm2_sign(issuer_priv, issuer_pub, tbs)


def read_cert_pubkey(path) -> str | None:
    """The X||Y key at bytes 15..78 of a cert file, or None if the file is missing or too short.
    Only the key is used, so a file the node wrote with an unknown layout past byte 78 still works."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    return raw[15:79].hex() if len(raw) >= 79 else None


@dataclass
class Signer:
    priv_hex: str
    pub_xy_hex: str
    cert_sn: bytes  # goes into SignatureValue bytes 4..9 and the EBDS CertSN element
    counter_file: Path | None = None

    def next_counter(self) -> int:
        """C as a Tass device keeps it: above every counter this key signed before (the node refuses
        a counter not above the last one it saw from a certificate), and at least Unix seconds.
        Kept in <keys>/<which>.counter under an flock, so separate processes never reuse one."""
        now = int(time.time())
        if self.counter_file is None:
            return now
        import fcntl
        with open(self.counter_file, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read().strip()
            last = int(text) if text.isdigit() else 0
            c = max(last + 1, now) & 0xFFFFFFFF
            f.seek(0)
            f.truncate()
            f.write(str(c))
            f.flush()
            return c

    @classmethod
    def load(cls, keys_dir, which: str = "platform") -> "Signer":
        d = Path(keys_dir)
        priv = (d / f"{which}.key").read_text().strip()
        cert = Cert.parse((d / f"{which}.cert").read_bytes())
        pub = pubkey_from_private(priv)
        if pub != cert.pub_xy_hex:
            raise ValueError(f"{which}.key does not match {which}.cert")
        return cls(priv, pub, cert.sn, d / f"{which}.counter")


# ----------------------------------------------------------------------------------------------
# Signature values and EBDS files

def make_signature_value(ebdb: bytes, signer: Signer, counter: int | None = None) -> str:
    c = int(time.time()) if counter is None else counter
    cb = (c & 0xFFFFFFFF).to_bytes(4, "big")
    sig = sm2_sign(signer.priv_hex, signer.pub_xy_hex, ebdb + cb)
    return base64.b64encode(cb + signer.cert_sn + sig).decode()


def parse_signature_value(b64: str) -> tuple[int, bytes, bytes]:
    """(counter, certSN, r||s); ValueError unless it is strict base64 of exactly 74 bytes."""
    raw = base64.b64decode("".join(b64.split()), validate=True)
    if len(raw) != 74:
        raise ValueError(f"SignatureValue is {len(raw)} bytes, not 74")
    return int.from_bytes(raw[:4], "big"), raw[4:10], raw[10:]


def make_ebds(ebdid: str, cert_sn: bytes, sigvalue: str) -> bytes:
    return render_xml("Signature", [
        ("Version", "1"),
        ("RelatedEBD", [("EBDID", ebdid)]),
        ("CertSN", cert_sn.hex()),
        ("SignatureAlgorithm", "SM2-SM3"),
        ("SignatureValue", sigvalue),
    ], root_ns=False)


# ----------------------------------------------------------------------------------------------
# XML building (by hand, so that the bytes we sign are exactly the bytes we choose)

def _render(tag: str, value, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    if value is None:
        return  # optional element left out
    if isinstance(value, list):
        out.append(f"{pad}<{tag}>")
        for t, v in value:
            _render(t, v, depth + 1, out)
        out.append(f"{pad}</{tag}>")
    else:
        out.append(f"{pad}<{tag}>{escape(str(value))}</{tag}>")


def render_xml(root: str, children: list, root_ns: bool = True) -> bytes:
    """children: list of (tag, str | list | None). UTF-8 without BOM, 2-space indentation."""
    ns = ' xmlns:xs="http://www.w3.org/2001/XMLSchema"' if root_ns else ""
    out = ['<?xml version="1.0" encoding="UTF-8"?>', f"<{root}{ns}>"]
    for t, v in children:
        _render(t, v, 1, out)
    out.append(f"</{root}>")
    return ("\n".join(out) + "\n").encode("utf-8")


def now8(offset_s: float = 0.0, at: float | None = None) -> str:
    t = (time.time() if at is None else at) + offset_s
    return dt.datetime.fromtimestamp(t, TZ8).strftime("%Y-%m-%d %H:%M:%S")


def time_arg(value: str | None, default_offset: float) -> str:
    """A time option: None -> now+default; a signed number -> now + that many seconds; anything
    else is used verbatim (so tests can send malformed times)."""
    if value is None:
        return now8(default_offset)
    try:
        return now8(float(value))
    except (ValueError, OverflowError):
        return value


_seq_lock = threading.Lock()
_last_seq = 0
_ebm_seq = secrets.randbelow(10000)


def new_ebdid(ebrid: str, type_code: str = "10") -> str:
    """type(2) + EBRID + 16-digit sequence = microseconds since the epoch, strictly increasing in
    this process so that a tight benchmark loop never repeats an id."""
    global _last_seq
    with _seq_lock:
        _last_seq = max(_last_seq + 1, time.time_ns() // 1000)
        return f"{type_code}{ebrid}{_last_seq % 10**16:016d}"


def new_ebmid(ebrid: str) -> str:
    """EBRID + YYYYMMDD (UTC+8) + 4-digit sequence. The sequence starts at a random value and counts
    up within a process (random-per-call would collide ~40% of the time in 100 sends)."""
    global _ebm_seq
    with _seq_lock:
        _ebm_seq = _ebm_seq % 9999 + 1  # 0001..9999; real sequences start at 0001
        seq = _ebm_seq
    return f"{ebrid}{dt.datetime.now(TZ8):%Y%m%d}{seq:04d}"


def build_ebdb(ebd_type: str, body: list, *, ebdid: str, ebrid: str, src_url: str | None = None,
               dest: str | None = None, related_ebdid: str | None = None,
               ebd_time: str | None = None) -> bytes:
    return render_xml("EBD", [
        ("EBDVersion", "1"),
        ("EBDID", ebdid),
        ("EBDType", ebd_type),
        ("SRC", [("EBRID", ebrid), ("URL", src_url)]),
        ("DEST", [("EBRID", dest)] if dest else None),
        ("EBDTime", ebd_time or now8()),
        ("RelatedEBD", [("EBDID", related_ebdid)] if related_ebdid else None),
        (ebd_type, body),
    ])


def ebm_body(*, ebmid: str, ebrid: str, msg_type="1", related_ebmid=None, severity="4",
             area=DEFAULT_AREA, title="互操作测试广播", desc="这是一条由测试上级平台下发的应急广播。",
             sender_name="互操作测试上级平台", start=None, end=None, time_tag="SendTime",
             auxiliaries: list | None = None) -> list:
    return [
        ("EBMVersion", "1"),
        ("EBMID", ebmid),
        ("RelatedInfo", [("EBMID", related_ebmid)] if related_ebmid else None),
        ("MsgBasicInfo", [
            ("MsgType", msg_type),
            ("SenderName", sender_name),
            ("SenderCode", ebrid),
            (time_tag, now8()),
            ("EventType", "11000"),
            ("Severity", severity),
            ("StartTime", start or now8(-1)),
            ("EndTime", end or now8(600)),
        ]),
        ("MsgContent", [
            ("LanguageCode", "zho"),
            ("MsgTitle", title),
            ("MsgDesc", desc),
            ("AreaCode", area),
            *[("Auxiliary", a) for a in (auxiliaries or [])],
        ]),
    ]


# ----------------------------------------------------------------------------------------------
# Packages (tar)

@dataclass
class Package:
    tar: bytes
    ebdid: str
    ebdb: bytes
    ebmid: str | None = None
    counter: int | None = None

    @property
    def filename(self) -> str:
        return f"EBDT_{self.ebdid}.tar"


def build_tar(members: list[tuple[str, bytes]], mtime: int | None = None) -> bytes:
    """Plain ustar, flat, mode 0644, uid/gid 0, empty uname/gname, one mtime (as the real ones)."""
    mtime = int(time.time()) if mtime is None else mtime
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, mtime
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def flip_bit(data: bytes, n: int) -> bytes:
    """Flip bit n, counted from the most significant bit of byte 0 (bit n = byte n//8, mask 0x80>>n%8)."""
    if not 0 <= n < 8 * len(data):
        raise ValueError(f"bit {n} is outside the {len(data)}-byte EBDB")
    b = bytearray(data)
    b[n // 8] ^= 0x80 >> (n % 8)
    return bytes(b)


def make_package(ebd_type: str, body: list, *, signer: Signer | None, ebrid: str = DEFAULT_EBRID,
                 ebdid: str | None = None, src_url: str | None = None, dest: str | None = None,
                 related_ebdid: str | None = None, resources: list[tuple[str, bytes]] = (),
                 counter: int | None = None, unsigned: bool = False,
                 flip: int | None = None) -> Package:
    """Build, sign and tar one package. signer=None or unsigned=True leaves out the EBDS; flip
    changes one bit of the EBDB after signing (the EBDS still signs the original)."""
    ebdid = ebdid or new_ebdid(ebrid)
    at = time.time()
    if counter is not None:
        c = counter
    elif signer is not None:
        c = signer.next_counter()
    else:
        c = int(at)
    ebdb = build_ebdb(ebd_type, body, ebdid=ebdid, ebrid=ebrid, src_url=src_url, dest=dest,
                      related_ebdid=related_ebdid, ebd_time=now8(at=at))
    members = [(f"EBDB_{ebdid}.xml", ebdb)]
    ebds = None
    if signer is not None and not unsigned:
        ebds = make_ebds(ebdid, signer.cert_sn, make_signature_value(ebdb, signer, c))
    if flip is not None:
        ebdb = flip_bit(ebdb, flip)
        members[0] = (members[0][0], ebdb)
    members += list(resources)
    if ebds is not None:
        members.append((f"EBDS_EBDB_{ebdid}.xml", ebds))
    return Package(build_tar(members, int(at)), ebdid, ebdb, counter=c if ebds else None)


def make_ebm_package(signer: Signer | None, *, ebrid: str = DEFAULT_EBRID, ebmid: str | None = None,
                     mp3: bytes | None = None, mp3_name: str | None = None, digest: bool = False,
                     wrong_size: bool = False, ebdid=None, src_url=None, dest=None, counter=None,
                     unsigned=False, flip=None, **ebm_fields) -> Package:
    """An EBM package; ebm_fields go to ebm_body (msg_type, related_ebmid, severity, area, title,
    desc, start, end, time_tag, sender_name). mp3 bytes are attached as EBDR_<uuid>.mp3."""
    ebmid = ebmid or new_ebmid(ebrid)
    resources, aux = [], []
    if mp3 is not None:
        name = mp3_name or f"EBDR_{uuid.uuid4()}.mp3"
        resources.append((name, mp3))
        aux.append([("AuxiliaryType", "2"), ("AuxiliaryDesc", name),
                    ("Size", str(len(mp3) + (1 if wrong_size else 0))),
                    ("Digest", sm3_hex(mp3) if digest else None)])
    body = ebm_body(ebmid=ebmid, ebrid=ebrid, auxiliaries=aux, **ebm_fields)
    pkg = make_package("EBM", body, signer=signer, ebrid=ebrid, ebdid=ebdid, src_url=src_url,
                       dest=dest, resources=resources, counter=counter, unsigned=unsigned, flip=flip)
    pkg.ebmid = ebmid
    return pkg


def make_state_request_package(signer: Signer | None, ebmid: str, **kw) -> Package:
    pkg = make_package("EBMStateRequest", [("EBM", [("EBMID", ebmid)])], signer=signer, **kw)
    pkg.ebmid = ebmid
    return pkg


def make_omd_package(signer: Signer | None, omd_type: str, *, rpt_start=None, rpt_end=None,
                     rpt_type="Full", **kw) -> Package:
    body = [("OMDType", omd_type), ("Params", [
        ("RptStartTime", rpt_start or now8(-86400)), ("RptEndTime", rpt_end or now8()),
        ("RptType", rpt_type)])]
    return make_package("OMDRequest", body, signer=signer, **kw)


def make_receipt(signer: Signer, ebrid: str, result_code: int, related_ebdid: str | None,
                 dest: str | None, desc: str | None = None) -> Package:
    body = [("ResultCode", str(result_code)), ("ResultDesc", desc or RESULT_DESC.get(result_code, ""))]
    return make_package("EBDResponse", body, signer=signer, ebrid=ebrid, dest=dest,
                        related_ebdid=related_ebdid)


# ----------------------------------------------------------------------------------------------
# Parsing and verifying received packages

def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def parse_ebdb(xml: bytes) -> dict:
    """Header fields and the flattened body of an EBDB. Raises PackageError if it is not XML with
    an <EBD> root. Namespaces are ignored (peers declare useless ones)."""
    if xml.startswith(b"\xef\xbb\xbf"):
        xml = xml[3:]  # tolerate a BOM on input even though we never write one
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise PackageError("DTDs are refused")  # no entity expansion games
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise PackageError(f"EBDB is not well-formed XML: {e}") from None
    for el in root.iter():
        el.tag = _local(el.tag)
    if root.tag != "EBD":
        raise PackageError(f"EBDB root is <{root.tag}>, not <EBD>")

    def text(path):
        el = root.find(path)
        return None if el is None else (el.text or "").strip()

    ebd_type = text("EBDType")
    body_el = root.find(ebd_type) if ebd_type else None
    if body_el is None:  # fall back to the first non-header child
        body_el = next((c for c in root if c.tag not in HEADER_TAGS), None)
    body: dict = {}
    if body_el is not None:
        for el in body_el.iter():
            if el is body_el or len(el):
                continue
            v = (el.text or "").strip()
            if el.tag in body:
                if not isinstance(body[el.tag], list):
                    body[el.tag] = [body[el.tag]]
                body[el.tag].append(v)
            else:
                body[el.tag] = v
    return {"ebdid": text("EBDID"), "ebd_type": ebd_type, "src": text("SRC/EBRID"),
            "src_url": text("SRC/URL"), "dest": text("DEST/EBRID"), "ebd_time": text("EBDTime"),
            "related": text("RelatedEBD/EBDID"), "body": body}


def read_tar(tar_bytes: bytes) -> list[tuple[str, bytes]]:
    """(basename, data) of every member; PackageError on anything but a plain tar of regular files."""
    if len(tar_bytes) > MAX_BODY:
        raise PackageError("package too large")
    out, total = [], 0
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
            for m in tf:
                if not m.isreg():
                    raise PackageError(f"non-regular tar member {m.name!r} refused")
                total += m.size
                if len(out) >= MAX_MEMBERS or total > MAX_BODY:
                    raise PackageError("too many or too large tar members")
                f = tf.extractfile(m)
                out.append((m.name.rsplit("/", 1)[-1], f.read() if f else b""))
    except PackageError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as e:
        raise PackageError(f"not a readable tar: {e}") from None
    if not out:
        raise PackageError("empty tar")
    return out


def verify_package(tar_bytes: bytes, pubkey_xy_hex: str | None) -> dict:
    """Parse a package and check its EBDS against the given X||Y key (None: cannot verify).
    Returns the parse_ebdb() fields plus signed, verified, counter, cert_sn, ebds_related,
    resources {name: size}, xml (the EBDB text) and ebdb (raw bytes). PackageError if malformed."""
    members = read_tar(tar_bytes)
    ebdbs = [(n, d) for n, d in members if n.startswith("EBDB_") and n.lower().endswith(".xml")]
    if len(ebdbs) != 1:
        raise PackageError(f"{len(ebdbs)} EBDB_*.xml members (need exactly 1)")
    ebdb_name, ebdb = ebdbs[0]
    ebds_all = [(n, d) for n, d in members if n.startswith("EBDS_")]
    # Prefer the EBDS named after this EBDB; otherwise take any EBDS_ member.
    ebds = next((d for n, d in ebds_all if n == "EBDS_" + ebdb_name), None)
    if ebds is None and ebds_all:
        ebds = ebds_all[0][1]
    try:
        info = parse_ebdb(ebdb)
    except PackageError as e:
        m = re.fullmatch(r"EBDB_([0-9A-Za-z]{1,64})\.xml", ebdb_name)
        raise PackageError(str(e), m and m.group(1), ebdb.decode("utf-8", "replace")) from None
    info.update(signed=ebds is not None, verified=False, counter=None, cert_sn=None,
                ebds_related=None, sig_error=None,
                resources={n: len(d) for n, d in members if not n.startswith(("EBDB_", "EBDS_"))},
                xml=ebdb.decode("utf-8", "replace"), ebdb=ebdb)
    if ebds is not None:
        try:
            sroot = ET.fromstring(ebds) if b"<!DOCTYPE" not in ebds else None
            if sroot is None:
                raise ValueError("DTD in EBDS")
            for el in sroot.iter():
                el.tag = _local(el.tag)
            sv = sroot.find("SignatureValue")
            rel = sroot.find("RelatedEBD/EBDID")
            info["ebds_related"] = None if rel is None else (rel.text or "").strip()
            if sv is None or not (sv.text or "").strip():
                raise ValueError("no SignatureValue")
            c, sn, sig = parse_signature_value(sv.text)
            info["counter"], info["cert_sn"] = c, sn.hex()
            if pubkey_xy_hex is None:
                info["sig_error"] = "no public key to verify with"
            else:
                info["verified"] = sm2_verify(pubkey_xy_hex, sig, ebdb + c.to_bytes(4, "big"))
                if not info["verified"]:
                    info["sig_error"] = "signature does not verify"
        except (ET.ParseError, ValueError, binascii.Error) as e:
            info["sig_error"] = f"bad EBDS: {e}"
    return info


# ----------------------------------------------------------------------------------------------
# HTTP client side

@dataclass
class HttpResult:
    status: int | None
    headers: dict
    body: bytes
    t_post_ns: int
    elapsed_ms: float
    error: str | None = None


def multipart(tar_bytes: bytes, filename: str) -> tuple[bytes, str]:
    boundary = "----ebdplatform" + secrets.token_hex(12)
    head = (f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + tar_bytes + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_package(url: str, tar_bytes: bytes, filename: str = "EBDT.tar",
                 timeout: float = REQUEST_TIMEOUT, insecure: bool = False) -> HttpResult:
    """POST one tar as the multipart "file" part. Never raises for network errors: they come back
    as status None + error. t_post_ns is taken after the TCP/TLS connect, just before sending."""
    body, ctype = multipart(tar_bytes, filename)
    u = urllib.parse.urlsplit(url)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    t0 = time.time_ns()
    try:
        if u.scheme == "https":
            ctx = ssl._create_unverified_context() if insecure else ssl.create_default_context()
            conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=ctx)
        elif u.scheme == "http":
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        else:
            raise ValueError(f"unsupported URL {url!r}")
        try:
            conn.connect()
            t0 = time.time_ns()
            conn.request("POST", path, body=body, headers={
                "Content-Type": ctype, "Connection": "close", "User-Agent": "ebd_platform.py"})
            resp = conn.getresponse()
            data = resp.read()
            t1 = time.time_ns()
            return HttpResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, t0,
                              (t1 - t0) / 1e6)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ValueError) as e:
        return HttpResult(None, {}, b"", t0, (time.time_ns() - t0) / 1e6,
                          f"{type(e).__name__}: {e}")


def result_json(res: HttpResult, node_pub: str | None, ebdid=None, ebmid=None) -> dict:
    """The one-line outcome the send* commands print."""
    out = {"http_status": res.status, "ebdid": ebdid, "ebmid": ebmid, "result_code": None,
           "result_desc": None, "related": None, "receipt_signed": False, "receipt_verified": False,
           "elapsed_ms": round(res.elapsed_ms, 3), "t_post_ns": res.t_post_ns,
           "receipt_ebdid": None, "receipt_type": None, "error": res.error}
    if res.status is None:
        return out
    try:
        r = verify_package(res.body, node_pub)
    except PackageError as e:
        out["error"] = f"receipt unparseable: {e}"
        return out
    body = r["body"]
    try:
        out["result_code"] = int(body.get("ResultCode"))
    except (TypeError, ValueError):
        out["result_code"] = None
    out.update(result_desc=body.get("ResultDesc"), related=r["related"],
               receipt_signed=r["signed"], receipt_verified=r["verified"],
               receipt_ebdid=r["ebdid"], receipt_type=r["ebd_type"])
    if r["ebd_type"] != "EBDResponse":
        out["error"] = f"reply is {r['ebd_type']!r}, not EBDResponse"
    elif r["signed"] and not r["verified"]:
        out["error"] = f"receipt signature: {r['sig_error']}"
    return out


def send_package(url: str, pkg: Package, node_cert_path=None, timeout=REQUEST_TIMEOUT,
                 insecure=False) -> dict:
    res = post_package(url, pkg.tar, pkg.filename, timeout, insecure)
    pub = read_cert_pubkey(node_cert_path) if node_cert_path else None
    return result_json(res, pub, pkg.ebdid, pkg.ebmid)


# ----------------------------------------------------------------------------------------------
# HTTP server side (the platform's receive URL)

def extract_tar_from_post(content_type: str, body: bytes) -> bytes:
    """The tar inside a multipart/form-data body: the part whose filename ends in .tar, else the
    part named "file". A non-multipart body is taken as the tar itself (tolerant, like real peers)."""
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type or "", re.I)
    if not (content_type or "").lower().startswith("multipart/") or not m:
        return body
    boundary = (m.group(1) or m.group(2)).encode("latin-1", "replace")
    parts = (b"\r\n" + body).split(b"\r\n--" + boundary)
    by_name = None
    for part in parts[1:]:
        if part.startswith(b"--"):
            break  # closing delimiter
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disp = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                disp = line
        fn = re.search(r'filename="([^"]*)"', disp) or re.search(r"filename=([^;\s]+)", disp)
        nm = re.search(r'\bname="([^"]*)"', disp) or re.search(r"\bname=([^;\s]+)", disp)
        if fn and fn.group(1).lower().endswith(".tar"):
            return data
        if nm and nm.group(1) == "file" and by_name is None:
            by_name = data
    if by_name is None:
        raise PackageError("no .tar file part and no part named 'file' in the multipart body")
    return by_name


class Events:
    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, rec: dict) -> None:
        line = json.dumps(rec, ensure_ascii=False)
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()


class PlatformHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # so Expect: 100-continue works; we still close after each reply
    timeout = 30  # socket timeout: a stalled client must not hold a thread forever
    server: "PlatformServer"

    def log_message(self, fmt, *args):
        log(f"{self.address_string()} {fmt % args}")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise PackageError("truncated chunked body")
                size = int(line.split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise PackageError("body too large")
                data = self.rfile.read(size)
                if len(data) != size:
                    raise PackageError("truncated chunk")
                chunks.append(data)
                self.rfile.readline(1024)
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            raise PackageError(f"bad Content-Length {n}")
        data = self.rfile.read(n)
        if len(data) != n:
            raise PackageError("truncated body")
        return data

    def do_POST(self):
        t_ns = time.time_ns()
        srv = self.server
        ev = {"t_ns": t_ns, "path": self.path, "ebd_type": None, "ebdid": None, "related": None,
              "src": None, "src_url": None, "dest": None, "signed": False, "verified": False,
              "counter": None, "cert_sn": None, "body": {}, "resources": {}, "xml": None,
              "result_code": None, "error": None}
        code = 2
        try:
            raw = self._read_body()
            tar = extract_tar_from_post(self.headers.get("Content-Type", ""), raw)
            info = verify_package(tar, read_cert_pubkey(srv.node_cert))
            for k in ("ebd_type", "ebdid", "related", "src", "src_url", "dest", "signed",
                      "verified", "counter", "cert_sn", "body", "resources", "xml"):
                ev[k] = info[k]
            ev["error"] = info["sig_error"] if info["signed"] else None
            if not info["ebdid"] or not info["ebd_type"]:
                raise PackageError("EBDB lacks EBDID or EBDType")
            # Heartbeats and receipts are accepted whatever their signature (as most receivers do);
            # the event still records signed/verified so tests can check the node's signatures.
            code = 1 if info["verified"] or info["ebd_type"] in UNSIGNED_OK else 4
        except PackageError as e:
            code, ev["error"] = 2, str(e)
            ev["ebdid"] = ev["ebdid"] or e.ebdid  # lets the receipt carry RelatedEBD anyway
            ev["xml"] = ev["xml"] or e.xml
        except ValueError as e:
            code, ev["error"] = 2, str(e)
        except Exception as e:  # never let garbage kill the server; answer "parse failure"
            code, ev["error"] = 2, f"{type(e).__name__}: {e}"
        ev["result_code"] = code
        try:
            rc = make_receipt(srv.signer, srv.ebrid, code, ev["ebdid"], ev["src"])
        except Exception as e:
            ev["error"] = f"{ev['error']}; receipt failed: {e!r}"
            srv.events.write(ev)
            self.send_error(500, "receipt construction failed")
            return
        srv.events.write(ev)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Disposition", f'attachment;filename="{rc.filename}"')
        self.send_header("Content-Length", str(len(rc.tar)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(rc.tar)
        self.close_connection = True

    def do_GET(self):
        self.send_error(405, "POST an EBD package")


class PlatformServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, signer: Signer, node_cert: str, events: Events, ebrid: str):
        super().__init__(addr, PlatformHandler)
        self.signer, self.node_cert, self.events, self.ebrid = signer, node_cert, events, ebrid


# ----------------------------------------------------------------------------------------------
# Subcommands

def _sample(d: Path, prefix: str) -> bytes:
    found = sorted(d.glob(prefix + "_*"))
    if not found:
        raise FileNotFoundError(f"no {prefix}_* sample in {d}")
    return found[0].read_bytes()


def cmd_selftest(a) -> int:
    d = Path(a.samples_dir)
    m, s = _sample(d, "01"), _sample(d, "02")
    c5, c6 = Cert.parse(_sample(d, "05")), Cert.parse(_sample(d, "06"))
    sv = re.search(rb"<SignatureValue>\s*([^<]+?)\s*</SignatureValue>", s).group(1).decode()
    c, sn, sig = parse_signature_value(sv)
    cb = c.to_bytes(4, "big")
    results = {}

    def check(name, ok, required=True, **extra):
        results[name] = (bool(ok), required)
        print(json.dumps({"check": name, "ok": bool(ok), "required": required, **extra},
                         ensure_ascii=False), flush=True)

    # The three checks the brief requires.
    check("sample02_signs_sample01||C_with_cert05", sm2_verify(c5.pub_xy_hex, sig, m + cb),
          counter=f"{c:08x}", sig_cert_sn=sn.hex(), cert05_sn=c5.sn.hex())
    check("cert05_signed_by_cert06", c5.signed_by(c6.pub_xy_hex),
          cert05_issuer=c5.issuer_sn.hex(), cert06_sn=c6.sn.hex())
    check("one_bit_flip_fails", not sm2_verify(c5.pub_xy_hex, sig, flip_bit(m, 8 * 100 + 7) + cb))
    # Corroborating facts (reported, and required since they follow from the README's claims).
    check("M_alone_fails", not sm2_verify(c5.pub_xy_hex, sig, m))
    check("C||M_fails", not sm2_verify(c5.pub_xy_hex, sig, cb + m))
    check("signature_certsn_is_cert05_sn", sn == c5.sn)
    check("sm3_abc_vector", sm3_hex(b"abc") ==
          "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0")
    check("sm3_hashlib_equals_gmssl", sm3_hex(m) == sm3.sm3_hash(func.bytes_to_list(m)))
    check("range_checks_reject_zero_sig",
          not sm2_verify(c5.pub_xy_hex, bytes(64), m + cb) and
          not sm2_verify(c5.pub_xy_hex, sig[:32] + bytes(32), m + cb))
    # Informational: the sample CA is NOT self-signed (its issuer is 000000000002).
    check("cert06_self_signed", c6.signed_by(c6.pub_xy_hex), required=False,
          cert06_issuer=c6.issuer_sn.hex())
    # Our own key/cert/package round trip (no network).
    ca_priv, ca_pub = gen_keypair()
    p_priv, p_pub = gen_keypair()
    ca = Cert.parse(build_cert(CA_SN, CA_SN, ca_pub, ca_priv, ca_pub))
    pc = Cert.parse(build_cert(CA_SN, PLATFORM_SN, p_pub, ca_priv, ca_pub))
    check("own_ca_self_signed", ca.signed_by(ca_pub))
    check("own_platform_cert_signed_by_ca", pc.signed_by(ca_pub) and not pc.signed_by(p_pub))
    k = _crypt("04" + "0" * 126)  # would be mangled by gmssl's constructor lstrip("04")
    check("gmssl_lstrip_workaround", k.public_key == "04" + "0" * 126)
    signer = Signer(p_priv, p_pub, PLATFORM_SN)
    pkg = make_ebm_package(signer, mp3=b"ID3fake-mp3", digest=True)
    info = verify_package(pkg.tar, p_pub)
    check("own_package_verifies", info["signed"] and info["verified"] and info["ebdid"] == pkg.ebdid
          and info["body"].get("EBMID") == pkg.ebmid and info["cert_sn"] == PLATFORM_SN.hex())
    # Flip the low bit of a digit of the EBMID: the XML stays well-formed, only the signature breaks.
    pos = pkg.ebdb.index(b"<EBMID>") + len(b"<EBMID>") + 30
    bad = verify_package(make_ebm_package(signer, ebmid=pkg.ebmid, flip=8 * pos + 7).tar, p_pub)
    check("own_flipped_package_fails", bad["signed"] and not bad["verified"],
          flipped_ebmid=bad["body"].get("EBMID"))
    ok = all(v for v, req in results.values() if req)
    print(json.dumps({"selftest": "pass" if ok else "FAIL"}), flush=True)
    return 0 if ok else 1


def _valid_keys(d: Path) -> bool:
    try:
        ca = Cert.parse((d / "ca.cert").read_bytes())
        Signer.load(d, "platform")
        Signer.load(d, "rogue")
        return Cert.parse((d / "platform.cert").read_bytes()).signed_by(ca.pub_xy_hex)
    except (OSError, ValueError):
        return False


def cmd_keys(a) -> int:
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    reused = not a.force and _valid_keys(d)
    if not reused:
        ca_priv, ca_pub = gen_keypair()
        p_priv, p_pub = gen_keypair()
        r_priv, r_pub = gen_keypair()
        files = {
            "ca.cert": build_cert(CA_SN, CA_SN, ca_pub, ca_priv, ca_pub),
            "platform.cert": build_cert(CA_SN, PLATFORM_SN, p_pub, ca_priv, ca_pub),
            "rogue.cert": build_cert(ROGUE_SN, ROGUE_SN, r_pub, r_priv, r_pub),
            "ca.key": (ca_priv + "\n").encode(),  # kept so tests can issue more certs later
            "platform.key": (p_priv + "\n").encode(),
            "rogue.key": (r_priv + "\n").encode(),
        }
        for name, data in files.items():
            p = d / name
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if name.endswith(".key") else 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    out = {n.replace(".", "_"): str((d / n).resolve()) for n in
           ("ca.cert", "platform.cert", "platform.key", "rogue.cert", "rogue.key", "ca.key")}
    out.update(ca_sn=CA_SN.hex(), platform_sn=PLATFORM_SN.hex(), rogue_sn=ROGUE_SN.hex(),
               platform_pub=Cert.parse((d / "platform.cert").read_bytes()).pub_xy_hex,
               reused=reused)
    print(json.dumps(out), flush=True)
    return 0


def cmd_serve(a) -> int:
    signer = Signer.load(a.keys, "platform")
    srv = PlatformServer((a.host, a.port), signer, a.node_cert, Events(a.events), a.ebrid)
    def on_term(*_):  # SIGTERM: leave serve_forever() the same way as Ctrl-C and exit 0
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    print(f"ready {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


def _signer_for(a) -> Signer:
    return Signer.load(a.keys, a.key)


def _common_kw(a) -> dict:
    return dict(ebrid=a.ebrid, ebdid=a.ebdid, src_url=a.src_url, dest=a.dest, counter=a.counter,
                unsigned=a.unsigned, flip=a.flip_bit)


def _finish_send(a, pkg: Package) -> int:
    if a.save:
        Path(a.save).write_bytes(pkg.tar)
    out = send_package(a.node, pkg, a.node_cert, a.timeout, a.insecure)
    print(json.dumps(out, ensure_ascii=False), flush=True)
    return 0 if out["http_status"] is not None else 1


def cmd_send(a) -> int:
    mp3 = Path(a.mp3).read_bytes() if a.mp3 else None
    pkg = make_ebm_package(
        _signer_for(a), ebmid=a.ebmid, mp3=mp3, digest=a.digest, wrong_size=a.wrong_size,
        msg_type=a.msg_type, related_ebmid=a.related_ebmid, severity=a.severity, area=a.area,
        title=a.title, desc=a.desc, sender_name=a.sender_name, start=time_arg(a.start, -1),
        end=time_arg(a.end, 600), time_tag=a.time_tag, **_common_kw(a))
    return _finish_send(a, pkg)


def cmd_send_state_request(a) -> int:
    return _finish_send(a, make_state_request_package(_signer_for(a), a.ebmid, **_common_kw(a)))


def cmd_send_omd(a) -> int:
    pkg = make_omd_package(_signer_for(a), a.omd_type, rpt_start=time_arg(a.rpt_start, -86400),
                           rpt_end=time_arg(a.rpt_end, 0), rpt_type=a.rpt_type, **_common_kw(a))
    return _finish_send(a, pkg)


def cmd_send_raw(a) -> int:
    data = Path(a.tar).read_bytes()
    res = post_package(a.node, data, a.filename or Path(a.tar).name, a.timeout, a.insecure)
    pub = read_cert_pubkey(a.node_cert) if a.node_cert else None
    ebdid = ebmid = None
    try:  # report the ids if the file happens to be a parseable package
        sent = verify_package(data, None)
        ebdid, ebmid = sent["ebdid"], sent["body"].get("EBMID")
    except PackageError:
        pass
    out = result_json(res, pub, ebdid, ebmid if isinstance(ebmid, str) else None)
    print(json.dumps(out, ensure_ascii=False), flush=True)
    return 0 if out["http_status"] is not None else 1


def _int0(s: str) -> int:
    v = int(s, 0)  # decimal or 0x-hex
    if not 0 <= v <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError("counter must fit in 4 bytes")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="EBD upper-platform simulator (see module docstring)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("selftest", help="verify the conformance samples and local round trips")
    s.add_argument("samples_dir")
    s.set_defaults(fn=cmd_selftest)

    s = sub.add_parser("keys", help="make CA, platform and rogue keys/certs in DIR")
    s.add_argument("dir")
    s.add_argument("--force", action="store_true", help="regenerate even if valid files exist")
    s.set_defaults(fn=cmd_keys)

    s = sub.add_parser("serve", help="the platform's receive URL")
    s.add_argument("--keys", required=True)
    s.add_argument("--node-cert", required=True, help="node's 143-byte cert (read at each request)")
    s.add_argument("--events", required=True, help="JSON-lines file to append to")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--ebrid", default=DEFAULT_EBRID)
    s.set_defaults(fn=cmd_serve)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--node", required=True, help="the node's receive URL")
    common.add_argument("--keys", required=True)
    common.add_argument("--node-cert", required=True, help="to verify the receipt's signature")
    common.add_argument("--ebrid", default=DEFAULT_EBRID, help="platform EBRID (23 digits)")
    common.add_argument("--dest", help="node EBRID for DEST/EBRID")
    common.add_argument("--src-url", help="the simulator's own serve URL for SRC/URL")
    common.add_argument("--key", choices=("platform", "rogue"), default="platform")
    common.add_argument("--counter", type=_int0, help="signature counter C (default Unix seconds)")
    common.add_argument("--ebdid")
    common.add_argument("--unsigned", action="store_true", help="leave out the EBDS")
    common.add_argument("--flip-bit", type=int, metavar="N",
                        help="flip bit N of the EBDB after signing (byte N//8, mask 0x80>>N%%8); "
                        "flipping the low bit (N%%8 == 7) of a digit keeps the XML well-formed")
    common.add_argument("--save", metavar="FILE", help="also write the tar here")
    common.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT)
    common.add_argument("--insecure", action="store_true", help="https: skip cert verification")

    s = sub.add_parser("send", parents=[common], help="send one EBM")
    s.add_argument("--msg-type", default="1", help="1 play, 2 cancel, 3/4/5 drills")
    s.add_argument("--ebmid")
    s.add_argument("--related-ebmid", help="RelatedInfo/EBMID (for a cancel)")
    s.add_argument("--severity", default="4")
    s.add_argument("--area", default=DEFAULT_AREA, help="comma-separated 12-digit codes")
    s.add_argument("--title", default="互操作测试广播")
    s.add_argument("--desc", default="这是一条由测试上级平台下发的应急广播。")
    s.add_argument("--sender-name", default="互操作测试上级平台")
    s.add_argument("--mp3", metavar="FILE", help="attach as EBDR_<uuid>.mp3")
    s.add_argument("--digest", action="store_true", help="put the mp3's SM3 hex digest in Digest")
    s.add_argument("--wrong-size", action="store_true", help="Size = real size + 1")
    s.add_argument("--start", help='"YYYY-MM-DD hh:mm:ss" or seconds from now (default -1)')
    s.add_argument("--end", help='"YYYY-MM-DD hh:mm:ss" or seconds from now (default 600)')
    s.add_argument("--time-tag", choices=("SendTime", "SentTime"), default="SendTime")
    s.set_defaults(fn=cmd_send)

    s = sub.add_parser("send-state-request", parents=[common], help="send an EBMStateRequest")
    s.add_argument("--ebmid", required=True)
    s.set_defaults(fn=cmd_send_state_request)

    s = sub.add_parser("send-omd", parents=[common], help="send an OMDRequest")
    s.add_argument("--omd-type", required=True,
                   help="EBRDTInfo | EBRDTState | EBMBrdLog (any string is sent as is)")
    s.add_argument("--rpt-start", help="default: 1 day ago")
    s.add_argument("--rpt-end", help="default: now")
    s.add_argument("--rpt-type", default="Full")
    s.set_defaults(fn=cmd_send_omd)

    s = sub.add_parser("send-raw", help="POST an arbitrary file as the multipart file part")
    s.add_argument("--node", required=True)
    s.add_argument("--tar", required=True, metavar="FILE")
    s.add_argument("--filename", help="multipart filename (default: the file's basename)")
    s.add_argument("--node-cert", help="to verify the receipt's signature, if any")
    s.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT)
    s.add_argument("--insecure", action="store_true")
    s.set_defaults(fn=cmd_send_raw)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (OSError, ValueError) as e:  # missing key files, bad --flip-bit, ...
        log(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
