//! Writes the files `tests/bench/thumbnails.sh` uploads: for each of 16 copies, a 700-byte JPEG whose
//! header claims 7,000 × 7,000 pixels, a PNG of 7,000 × 7,000 that deflates to almost nothing (a
//! decompression bomb), a real 7,000 × 7,000 JPEG of one colour (small on disk, large decoded), and a
//! 4,000 × 3,000 photo-like JPEG (what a phone sends).
//!
//! Usage: thumb_files <directory>

use std::io::Cursor;

fn jpeg(img: &image::RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .expect("encode");
    out
}

/// Gives each copy different bytes (a JPEG comment or a PNG text chunk would do; a pixel is simpler).
fn salted(mut img: image::RgbImage, salt: u8) -> image::RgbImage {
    img.put_pixel(0, 0, image::Rgb([salt, salt, salt]));
    img
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: thumb_files <directory>");
    std::fs::create_dir_all(&dir).expect("directory");
    let small = jpeg(&image::RgbImage::new(16, 16), 80);
    let flat = image::RgbImage::from_pixel(7000, 7000, image::Rgb([90, 120, 150]));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let photo = image::RgbImage::from_fn(4000, 3000, |x, y| {
        // A smooth scene with sensor noise: compresses like a phone photo, not like a test card.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed & 15) as u8;
        image::Rgb([
            ((x / 16) as u8).wrapping_add(n),
            ((y / 12) as u8).wrapping_add(n),
            (((x + y) / 28) as u8).wrapping_add(n),
        ])
    });
    for i in 0..16u8 {
        let mut lying = small.clone();
        let sof = lying
            .windows(2)
            .position(|m| m == [0xFF, 0xC0])
            .expect("baseline frame header");
        lying[sof + 5..sof + 7].copy_from_slice(&7000u16.to_be_bytes());
        lying[sof + 7..sof + 9].copy_from_slice(&7000u16.to_be_bytes());
        lying.splice(2..2, [0xFF, 0xFE, 0x00, 0x03, i]);
        std::fs::write(format!("{dir}/lying-{i:02}.jpg"), &lying).expect("write");

        let mut png = Cursor::new(Vec::new());
        salted(image::RgbImage::new(7000, 7000), i)
            .write_to(&mut png, image::ImageFormat::Png)
            .expect("png");
        std::fs::write(format!("{dir}/bomb-{i:02}.png"), png.into_inner()).expect("write");

        std::fs::write(
            format!("{dir}/flat-{i:02}.jpg"),
            jpeg(&salted(flat.clone(), i), 85),
        )
        .expect("write");
        std::fs::write(
            format!("{dir}/photo-{i:02}.jpg"),
            jpeg(&salted(photo.clone(), i), 85),
        )
        .expect("write");
    }
}
