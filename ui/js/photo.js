// Photos on the phone before they are queued. Every picture is re-encoded: at most 1600 px on its
// longest side, JPEG quality 0.8, the camera's rotation applied. A 4–6 MB camera photo becomes
// 200–400 KB, which is what lets it arrive over village Wi-Fi at all, and re-encoding drops every
// piece of metadata (where it was taken, the phone's model, the owner's name) without having to find
// it. Even a small JPEG is re-encoded rather than sent as is: one path, and no metadata left by
// mistake. The position goes back in only when the person ticks "keep photo location" (exif.js).
// Videos (video/mp4) are queued unchanged: the phone cannot re-encode them, and their metadata is not
// removed.
import { readGps, buildExif, insertExif, stripMetadata } from './exif.js';
import { Sha256, toHex } from './sha256.js';

export const MAX_SIDE = 1600;
export const QUALITY = 0.8;
// The camera's EXIF sits in the first 64 KiB; more leaves room for other blocks before it.
const HEAD_BYTES = 256 * 1024;

function jpegName(name) {
  const base = (name || 'photo').replace(/\.[^.]*$/, '') || 'photo';
  return `${base}.jpg`;
}

async function decode(file) {
  if ('createImageBitmap' in self) {
    try {
      return await createImageBitmap(file, { imageOrientation: 'from-image' });
    } catch (_) { /* older browsers refuse the options; try without */ }
    try {
      return await createImageBitmap(file);
    } catch (_) { /* fall through to an <img> */ }
  }
  const url = URL.createObjectURL(file);
  try {
    const img = new Image();
    img.src = url;
    if (img.decode) await img.decode();
    else await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; });
    return img;
  } finally {
    URL.revokeObjectURL(url);
  }
}

function paint(ctx, source, width, height) {
  // White under transparent PNGs: JPEG has no transparency and would show black.
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height);
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, 0, 0, width, height);
}

async function reencode(file) {
  const source = await decode(file);
  try {
    const w = source.width || source.naturalWidth;
    const h = source.height || source.naturalHeight;
    if (!w || !h) return null;
    const scale = Math.min(1, MAX_SIDE / Math.max(w, h));
    const width = Math.max(1, Math.round(w * scale));
    const height = Math.max(1, Math.round(h * scale));
    let blob = null;
    if (typeof OffscreenCanvas !== 'undefined') {
      try {
        const canvas = new OffscreenCanvas(width, height);
        paint(canvas.getContext('2d'), source, width, height);
        blob = await canvas.convertToBlob({ type: 'image/jpeg', quality: QUALITY });
      } catch (_) {
        blob = null;
      }
    }
    if (!blob) {
      const canvas = document.createElement('canvas');
      canvas.width = width;
      canvas.height = height;
      paint(canvas.getContext('2d'), source, width, height);
      blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/jpeg', QUALITY));
      canvas.width = 0;
      canvas.height = 0;
    }
    // A browser that cannot write JPEG hands back PNG: not what was promised, so not used.
    return blob && blob.type === 'image/jpeg' ? blob : null;
  } finally {
    if (source.close) source.close();
  }
}

// A picked file made ready for the outbox: { blob, name, type, gps } where gps is the position the
// camera recorded (kept aside, not in the blob) or null.
export async function preparePhoto(file) {
  const type = (file.type || '').toLowerCase();
  if (type.startsWith('video/')) return { blob: file, name: file.name || 'video.mp4', type, gps: null };
  let gps = null;
  try {
    gps = readGps(new Uint8Array(await file.slice(0, HEAD_BYTES).arrayBuffer()));
  } catch (_) {
    gps = null;
  }
  let blob = null;
  try {
    blob = await reencode(file);
  } catch (_) {
    blob = null;
  }
  if (blob) return { blob, name: jpegName(file.name), type: 'image/jpeg', gps };
  // This browser cannot draw it: it goes as it is, a JPEG at least without its metadata.
  if (type === 'image/jpeg') {
    const clean = stripMetadata(new Uint8Array(await file.arrayBuffer()));
    if (clean) return { blob: new Blob([clean], { type }), name: file.name || 'photo.jpg', type, gps };
  }
  return { blob: file, name: file.name || 'photo', type: type || 'application/octet-stream', gps };
}

// The photo with the camera's position written back, for a person who asked to keep it.
export async function withLocation(blob, gps) {
  if (!gps || blob.type !== 'image/jpeg') return blob;
  const out = insertExif(new Uint8Array(await blob.arrayBuffer()), buildExif(gps));
  return out ? new Blob([out], { type: 'image/jpeg' }) : blob;
}

// The lowercase hex SHA-256 of a blob, for the upload metadata. crypto.subtle where the page is
// secure, else the JavaScript one, a megabyte at a time.
export async function hashBlob(blob) {
  if (self.crypto && crypto.subtle && self.isSecureContext) {
    return toHex(new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer())));
  }
  const hash = new Sha256();
  for (let at = 0; at < blob.size; at += 1024 * 1024) {
    hash.update(new Uint8Array(await blob.slice(at, at + 1024 * 1024).arrayBuffer()));
  }
  return hash.hex();
}
