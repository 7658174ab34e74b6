// The photo position in EXIF (ui/js/exif.js): read from a camera's JPEG built here by hand, written
// back into a re-encoded one, and never a crash on broken or hostile files. Run with
// `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');
const source = readFileSync(join(UI, 'js', 'exif.js'), 'utf8');
const exif = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

// Wuyi county seat, as a phone camera writes it: 28°53'31.2"N 119°48'50.4"E.
const WUYI = { latRef: 'N', lat: [[28, 1], [53, 1], [312, 10]], lonRef: 'E', lon: [[119, 1], [48, 1], [504, 10]] };

// A TIFF the way cameras write it (little-endian here, unlike the writer under test): IFD0 with the
// camera's make and the GPS pointer, a GPS IFD with the version, both positions and the altitude.
function cameraTiff(gps, { little = true } = {}) {
  const buf = Buffer.alloc(400);
  const u16 = (v, at) => (little ? buf.writeUInt16LE(v, at) : buf.writeUInt16BE(v, at));
  const u32 = (v, at) => (little ? buf.writeUInt32LE(v, at) : buf.writeUInt32BE(v, at));
  buf.write(little ? 'II' : 'MM', 0, 'latin1');
  u16(42, 2);
  u32(8, 4);
  // IFD0: Make (ASCII, 8 bytes at 200), GPS pointer → 60.
  u16(2, 8);
  u16(0x010f, 10); u16(2, 12); u32(8, 14); u32(200, 18);
  u16(0x8825, 22); u16(4, 24); u32(1, 26); u32(60, 30);
  u32(0, 34);
  buf.write('Xiaomi\0\0', 200, 'latin1');
  // GPS IFD at 60: version, lat ref, lat (→ 240), lon ref, lon (→ 264), altitude (→ 288).
  const entries = [
    [0, 1, 4, Buffer.from([2, 3, 0, 0])],
    [1, 2, 2, Buffer.from(gps.latRef + '\0', 'latin1')],
    [2, 5, 3, 240],
    [3, 2, 2, Buffer.from(gps.lonRef + '\0', 'latin1')],
    [4, 5, 3, 264],
    [6, 5, 1, 288],
  ];
  u16(entries.length, 60);
  entries.forEach(([tag, type, count, value], k) => {
    const at = 62 + k * 12;
    u16(tag, at); u16(type, at + 2); u32(count, at + 4);
    if (Buffer.isBuffer(value)) value.copy(buf, at + 8);
    else u32(value, at + 8);
  });
  u32(0, 62 + entries.length * 12);
  const rationals = (list, at) => list.forEach(([n, d], k) => { u32(n, at + k * 8); u32(d, at + k * 8 + 4); });
  rationals(gps.lat, 240);
  rationals(gps.lon, 264);
  rationals([[1234, 10]], 288);
  return buf.subarray(0, 296);
}

function segment(marker, body) {
  const head = Buffer.alloc(4);
  head.writeUInt16BE(0xff00 | marker, 0);
  head.writeUInt16BE(body.length + 2, 2);
  return Buffer.concat([head, body]);
}

// A JPEG's structure: SOI, APP0 JFIF, the given segments, a quantisation table, SOS with some
// "compressed" bytes, EOI. Browsers would not draw it; the EXIF code only reads the structure.
function jpeg(...extra) {
  return new Uint8Array(Buffer.concat([
    Buffer.from([0xff, 0xd8]),
    segment(0xe0, Buffer.from('JFIF\0\x01\x01\0\0\x01\0\x01\0\0', 'latin1')),
    ...extra,
    segment(0xdb, Buffer.alloc(65, 1)),
    segment(0xda, Buffer.from([1, 1, 0, 0, 0x3f, 0])),
    Buffer.from([0x12, 0x34, 0xff, 0x00, 0x56]),
    Buffer.from([0xff, 0xd9]),
  ]));
}

const exifSegment = (tiff) => segment(0xe1, Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), tiff]));
const xmpSegment = segment(0xe1, Buffer.from('http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>', 'latin1'));

test('reads the position a camera wrote, in either byte order, after an XMP block', () => {
  assert.deepEqual(exif.readGps(jpeg(exifSegment(cameraTiff(WUYI)))), WUYI);
  assert.deepEqual(exif.readGps(jpeg(exifSegment(cameraTiff(WUYI, { little: false })))), WUYI);
  assert.deepEqual(exif.readGps(jpeg(xmpSegment, exifSegment(cameraTiff(WUYI)))), WUYI);
  const south = { ...WUYI, latRef: 'S', lonRef: 'W' };
  assert.deepEqual(exif.readGps(jpeg(exifSegment(cameraTiff(south)))), south);
  const { lat, lon } = exif.gpsDecimal(WUYI);
  assert.ok(Math.abs(lat - 28.892) < 1e-9, String(lat));
  assert.ok(Math.abs(lon - 119.814) < 1e-9, String(lon));
  assert.equal(exif.readGps(jpeg()), null, 'no EXIF, no position');
});

test('writes a minimal EXIF block that reads back the same, right after SOI', () => {
  const app1 = exif.buildExif(WUYI);
  assert.equal(app1[0], 0xff);
  assert.equal(app1[1], 0xe1);
  assert.equal((app1[2] << 8) | app1[3], app1.length - 2);
  assert.equal(Buffer.from(app1.subarray(4, 10)).toString('latin1'), 'Exif\0\0');
  const plain = jpeg();
  const withGps = exif.insertExif(plain, app1);
  assert.deepEqual(Array.from(withGps.subarray(0, 4)), [0xff, 0xd8, 0xff, 0xe1]);
  assert.deepEqual(exif.readGps(withGps), WUYI);
  assert.equal(withGps.length, plain.length + app1.length);
  // Only the position: no camera make, no altitude.
  assert.ok(!Buffer.from(withGps).includes(Buffer.from('Xiaomi')));
  // Inserting into a photo that still has the camera's EXIF replaces it rather than adding a second.
  const again = exif.insertExif(jpeg(exifSegment(cameraTiff({ ...WUYI, latRef: 'S' }))), app1);
  assert.deepEqual(exif.readGps(again), WUYI);
  assert.equal(exif.buildExif({ ...WUYI, lat: [[1, 0], [0, 1], [0, 1]] }), null, 'zero denominator');
  assert.equal(exif.buildExif({ ...WUYI, latRef: 'X' }), null);
  assert.equal(exif.buildExif(null), null);
});

test('stripping removes EXIF and XMP and keeps the image', () => {
  const camera = jpeg(xmpSegment, exifSegment(cameraTiff(WUYI)));
  const clean = exif.stripMetadata(camera);
  assert.equal(exif.readGps(clean), null);
  assert.ok(!Buffer.from(clean).includes(Buffer.from('Exif\0\0', 'latin1')));
  assert.ok(!Buffer.from(clean).includes(Buffer.from('xmpmeta')));
  assert.deepEqual(clean, jpeg(), 'exactly the photo without its metadata');
  assert.equal(exif.stripMetadata(new Uint8Array([1, 2, 3])), null);
});

test('garbage, truncation and absurd lengths never throw, and give null', () => {
  const good = jpeg(exifSegment(cameraTiff(WUYI)));
  for (let n = 0; n < good.length; n++) {
    const cut = good.subarray(0, n);
    const got = exif.readGps(cut);
    assert.ok(got === null || JSON.stringify(got) === JSON.stringify(WUYI), `prefix ${n}`);
    exif.stripMetadata(cut);
  }
  for (let k = 0; k < 300; k++) {
    const noise = randomBytes(1 + (k * 37) % 2000);
    if (k % 2) { noise[0] = 0xff; noise[1] = 0xd8; noise[2] = 0xff; noise[3] = 0xe1; }
    assert.equal(exif.readGps(noise), null);
  }
  // Every single byte of the EXIF block flipped to 0xFF: hostile counts, offsets and lengths.
  for (let at = 2; at < 330; at++) {
    const bad = new Uint8Array(good);
    bad[at] = 0xff;
    exif.readGps(bad);
    exif.stripMetadata(bad);
  }
  // A segment that says it is 64 KiB long in a 100-byte file.
  const huge = new Uint8Array([0xff, 0xd8, 0xff, 0xe1, 0xff, 0xff, ...Buffer.from('Exif\0\0MM\0*\0\0\0\x08'), ...new Uint8Array(80)]);
  assert.equal(exif.readGps(huge), null);
  assert.equal(exif.stripMetadata(huge), null);
  // An IFD claiming 65535 entries; a GPS pointer far past the end.
  const tiff = cameraTiff(WUYI, { little: false });
  const manyEntries = Buffer.from(tiff); manyEntries.writeUInt16BE(0xffff, 8);
  assert.equal(exif.readGps(jpeg(exifSegment(manyEntries))), null);
  const farPointer = Buffer.from(tiff); farPointer.writeUInt32BE(0xfffffff0, 30);
  assert.equal(exif.readGps(jpeg(exifSegment(farPointer))), null);
  const farRationals = Buffer.from(tiff); farRationals.writeUInt32BE(0xffffffff, 62 + 2 * 12 + 8);
  assert.equal(exif.readGps(jpeg(exifSegment(farRationals))), null);
  const zeroDenominator = Buffer.from(tiff); zeroDenominator.writeUInt32BE(0, 244);
  assert.equal(exif.readGps(jpeg(exifSegment(zeroDenominator))), null);
  const offTheGlobe = cameraTiff({ ...WUYI, lat: [[95, 1], [0, 1], [0, 1]] });
  assert.equal(exif.readGps(jpeg(exifSegment(offTheGlobe))), null);
  for (const odd of [null, undefined, 'text', 42, {}, [], new ArrayBuffer(0)]) {
    assert.equal(exif.readGps(odd), null);
    assert.equal(exif.stripMetadata(odd), null);
  }
});

test('the first bytes of a large photo are enough to read its position', () => {
  const big = jpeg(exifSegment(cameraTiff(WUYI)), segment(0xe2, Buffer.alloc(60000)), segment(0xe2, Buffer.alloc(60000)));
  assert.deepEqual(exif.readGps(big.subarray(0, 1000)), WUYI);
});
