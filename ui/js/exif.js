// Photo position in JPEG EXIF, with no browser needed: reading the GPS position out of a camera's
// JPEG, writing a minimal EXIF block that holds only that position, and removing metadata from a
// JPEG. Phones re-encode photos before queueing them, which drops all EXIF, the position included;
// the position is put back only when the person asks for it. The readers return null on anything
// malformed rather than throwing: the bytes come from whatever camera or file the person picked.

const SOI = 0xd8;
const EOI = 0xd9;
const SOS = 0xda;
const APP1 = 0xe1;
const APP13 = 0xed;
const TAG_GPS_IFD = 0x8825;
const TYPE_ASCII = 2;
const TYPE_LONG = 4;
const TYPE_RATIONAL = 5;
const TYPE_IFD = 13;
// No real IFD has this many entries; a larger count is a corrupt or hostile file.
const MAX_ENTRIES = 512;

function bytesOf(input) {
  if (input instanceof Uint8Array) return input;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  return null;
}

function isExifHeader(b, at) {
  return b[at] === 0x45 && b[at + 1] === 0x78 && b[at + 2] === 0x69 && b[at + 3] === 0x66 && b[at + 4] === 0 && b[at + 5] === 0;
}

// The JPEG's segments before the image data, as [marker, start, end) with start at the 0xFF, or null
// when the structure is broken. Stops at SOS: metadata comes before the compressed image. `partial`
// keeps what was sound before a break, for reading the position out of the first bytes of a file.
function segments(b, partial = false) {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== SOI) return null;
  const list = [];
  const broken = () => (partial ? list : null);
  let i = 2;
  while (i < b.length) {
    if (b[i] !== 0xff) return broken();
    let j = i + 1;
    while (j < b.length && b[j] === 0xff) j++; // fill bytes
    if (j >= b.length) return broken();
    const marker = b[j];
    if (marker === SOS || marker === EOI) {
      list.push({ marker, start: i, end: b.length, data: j + 1 });
      return list;
    }
    if ((marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      list.push({ marker, start: i, end: j + 1, data: j + 1 });
      i = j + 1;
      continue;
    }
    if (j + 2 >= b.length) return broken();
    const length = (b[j + 1] << 8) | b[j + 2];
    const end = j + 1 + length;
    if (length < 2 || end > b.length) return broken();
    list.push({ marker, start: i, end, data: j + 3 });
    i = end;
  }
  return broken();
}

// The TIFF block inside the first EXIF APP1 segment.
function tiffOf(b) {
  const list = segments(b, true);
  if (!list) return null;
  for (const s of list) {
    if (s.marker === APP1 && s.end - s.data >= 14 && isExifHeader(b, s.data)) return b.subarray(s.data + 6, s.end);
  }
  return null;
}

function reader(t) {
  if (t.length < 8) return null;
  let little;
  if (t[0] === 0x49 && t[1] === 0x49) little = true;
  else if (t[0] === 0x4d && t[1] === 0x4d) little = false;
  else return null;
  const view = new DataView(t.buffer, t.byteOffset, t.byteLength);
  const r = {
    length: t.length,
    u16: (at) => (at >= 0 && at + 2 <= t.length ? view.getUint16(at, little) : null),
    u32: (at) => (at >= 0 && at + 4 <= t.length ? view.getUint32(at, little) : null),
    byte: (at) => (at >= 0 && at < t.length ? t[at] : null),
  };
  if (r.u16(2) !== 42) return null;
  return r;
}

function entries(r, offset) {
  const count = r.u16(offset);
  if (count === null || count > MAX_ENTRIES || offset + 2 + count * 12 > r.length) return null;
  const list = [];
  for (let k = 0; k < count; k++) {
    const at = offset + 2 + k * 12;
    list.push({ tag: r.u16(at), type: r.u16(at + 2), count: r.u32(at + 4), value: at + 8 });
  }
  return list;
}

function asciiRef(r, e, allowed) {
  if (!e || e.type !== TYPE_ASCII || !e.count) return null;
  const at = e.count <= 4 ? e.value : r.u32(e.value);
  const c = r.byte(at);
  if (c === null) return null;
  const ref = String.fromCharCode(c);
  return allowed.includes(ref) ? ref : null;
}

function rationals(r, e) {
  if (!e || e.type !== TYPE_RATIONAL || e.count !== 3) return null;
  const at = r.u32(e.value);
  if (at === null || at + 24 > r.length) return null;
  const out = [];
  for (let k = 0; k < 3; k++) {
    const n = r.u32(at + k * 8);
    const d = r.u32(at + k * 8 + 4);
    if (n === null || !d) return null;
    out.push([n, d]);
  }
  return out;
}

// Degrees, minutes, seconds as rationals → decimal degrees.
export function dmsToDegrees(dms) {
  return dms[0][0] / dms[0][1] + dms[1][0] / dms[1][1] / 60 + dms[2][0] / dms[2][1] / 3600;
}

// The position a JPEG's EXIF holds: { latRef: 'N'|'S', lat: [[n,d]×3], lonRef: 'E'|'W', lon: [[n,d]×3] }
// as the camera wrote it (so writing it back loses nothing), or null.
export function readGps(input) {
  try {
    const b = bytesOf(input);
    if (!b) return null;
    const t = tiffOf(b);
    if (!t) return null;
    const r = reader(t);
    if (!r) return null;
    const ifd0 = entries(r, r.u32(4));
    if (!ifd0) return null;
    const pointer = ifd0.find((e) => e.tag === TAG_GPS_IFD && (e.type === TYPE_LONG || e.type === TYPE_IFD) && e.count === 1);
    if (!pointer) return null;
    const gps = entries(r, r.u32(pointer.value));
    if (!gps) return null;
    const tag = (n) => gps.find((e) => e.tag === n);
    const latRef = asciiRef(r, tag(1), ['N', 'S']);
    const lat = rationals(r, tag(2));
    const lonRef = asciiRef(r, tag(3), ['E', 'W']);
    const lon = rationals(r, tag(4));
    if (!latRef || !lat || !lonRef || !lon) return null;
    const found = { latRef, lat, lonRef, lon };
    const { lat: dLat, lon: dLon } = gpsDecimal(found);
    if (!(Math.abs(dLat) <= 90 && Math.abs(dLon) <= 180)) return null;
    return found;
  } catch (_) {
    return null;
  }
}

// The position as signed decimal degrees.
export function gpsDecimal(gps) {
  const lat = dmsToDegrees(gps.lat) * (gps.latRef === 'S' ? -1 : 1);
  const lon = dmsToDegrees(gps.lon) * (gps.lonRef === 'W' ? -1 : 1);
  return { lat, lon };
}

function validRationals(list) {
  return Array.isArray(list) && list.length === 3 && list.every((p) => Array.isArray(p) && p.length === 2
    && p.every((x) => Number.isInteger(x) && x >= 0 && x <= 0xffffffff) && p[1] > 0);
}

// A complete APP1 segment (marker included) holding a big-endian TIFF with IFD0 = { GPSInfo pointer }
// and a GPS IFD with only the latitude, the longitude and their references. Null for a bad position.
export function buildExif(gps) {
  if (!gps || !['N', 'S'].includes(gps.latRef) || !['E', 'W'].includes(gps.lonRef)
    || !validRationals(gps.lat) || !validRationals(gps.lon)) return null;
  const IFD0 = 8;
  const GPS = IFD0 + 2 + 12 + 4;
  const LAT = GPS + 2 + 4 * 12 + 4;
  const LON = LAT + 24;
  const tiffLength = LON + 24;
  const segment = new Uint8Array(4 + 6 + tiffLength);
  const view = new DataView(segment.buffer);
  view.setUint16(0, 0xffe1);
  view.setUint16(2, 2 + 6 + tiffLength);
  segment.set([0x45, 0x78, 0x69, 0x66, 0, 0], 4);
  const T = 10;
  segment.set([0x4d, 0x4d], T);
  view.setUint16(T + 2, 42);
  view.setUint32(T + 4, IFD0);
  const entry = (at, tag, type, count, value) => {
    view.setUint16(T + at, tag);
    view.setUint16(T + at + 2, type);
    view.setUint32(T + at + 4, count);
    if (typeof value === 'string') {
      segment[T + at + 8] = value.charCodeAt(0);
      segment[T + at + 9] = 0;
    } else {
      view.setUint32(T + at + 8, value);
    }
  };
  view.setUint16(T + IFD0, 1);
  entry(IFD0 + 2, TAG_GPS_IFD, TYPE_LONG, 1, GPS);
  view.setUint32(T + IFD0 + 14, 0);
  view.setUint16(T + GPS, 4);
  entry(GPS + 2, 1, TYPE_ASCII, 2, gps.latRef);
  entry(GPS + 14, 2, TYPE_RATIONAL, 3, LAT);
  entry(GPS + 26, 3, TYPE_ASCII, 2, gps.lonRef);
  entry(GPS + 38, 4, TYPE_RATIONAL, 3, LON);
  view.setUint32(T + GPS + 50, 0);
  const put = (at, list) => list.forEach(([n, d], k) => {
    view.setUint32(T + at + k * 8, n);
    view.setUint32(T + at + k * 8 + 4, d);
  });
  put(LAT, gps.lat);
  put(LON, gps.lon);
  return segment;
}

// The JPEG without APP1 (EXIF, XMP) and APP13 (IPTC) segments: where a photo was taken, the camera,
// the owner's name. The colour profile (APP2) and the image stay. Null when it is not a sound JPEG.
export function stripMetadata(input) {
  try {
    const b = bytesOf(input);
    if (!b) return null;
    const list = segments(b);
    if (!list) return null;
    const parts = [b.subarray(0, 2)];
    for (const s of list) {
      if (s.marker === APP1 || s.marker === APP13) continue;
      parts.push(b.subarray(s.start, s.end));
    }
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  } catch (_) {
    return null;
  }
}

// The JPEG with `app1` (from buildExif) placed right after SOI, any earlier metadata removed. Null
// when the JPEG is not sound.
export function insertExif(jpeg, app1) {
  const clean = stripMetadata(jpeg);
  if (!clean || !app1) return null;
  const out = new Uint8Array(clean.length + app1.length);
  out.set(clean.subarray(0, 2), 0);
  out.set(app1, 2);
  out.set(clean.subarray(2), 2 + app1.length);
  return out;
}
