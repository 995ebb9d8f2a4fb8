//! bf16 products on AMX tiles (Intel's Advanced Matrix Extensions, Sapphire Rapids and later).
//!
//! One `tdpbf16ps` multiplies a 16 × 32 bf16 tile by a 32 × 16 one and adds the result to a
//! 16 × 16 f32 tile: 8,192 multiply-adds, about six times what the core's two AVX-512 FMA
//! ports do in f32 over the same cycles. The right-hand tile wants k in pairs, 16 columns of
//! pairs per row: exactly the layout of [`super::bf16::PackedBf16`], whose 32-column panels
//! hold two such tiles side by side (a row stride of 128 bytes).
//!
//! Linux hands out the 8 KiB of tile registers only to a process that asks for them
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`supported`] asks once, and says no where the CPU or
//! the kernel lacks them. The compiler never uses tile registers itself, so each product
//! configures them, uses them inside one `asm!` block at a time, and releases them at the end.

use std::sync::OnceLock;

/// Rows of the left operand one pass of the kernel covers: two 16-row tiles.
pub const ROWS: usize = 32;
/// Columns of a packed panel: two 16-column tiles.
pub const COLS: usize = 32;
/// Pairs of k in one tile: 16 (32 bf16 values, 64 bytes per tile row).
pub const PAIRS: usize = 16;

/// Whether this process may use AMX-BF16: the CPU has it (with AVX512-BF16, which rounds the
/// left operand) and the operating system granted the tile registers.
pub fn supported() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| cpu_has_amx() && super::bf16::supported() && request_tiles())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn cpu_has_amx() -> bool {
    // CPUID leaf 7, sub-leaf 0: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that reports AVX-512 (checked by the
    // caller's other conditions only later, but the instruction itself is always safe to run).
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only asks for a permission; it reads and writes
    // no memory of ours. It fails (non-zero) where the kernel has no AMX support.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn cpu_has_amx() -> bool {
    false
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tiles() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads (palette 1): every tile 16 rows of 64 bytes.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const CONFIG: Config = Config {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// One packed panel times every row block of the left operand: for each block of [`ROWS`]
/// rows from `r0`, calls `emit(r0, block)` with the [ROWS × COLS] f32 result (row-major).
///
/// `a_pairs` is [rows × pairs] bf16 pairs (row-major, `rows` a multiple of ROWS) and `panel`
/// [pairs × COLS] pairs, `pairs` a multiple of [`PAIRS`].
///
/// # Safety
/// [`supported`] must have returned true.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub unsafe fn panel_product(
    a_pairs: &[u32],
    rows: usize,
    pairs: usize,
    panel: &[u32],
    mut emit: impl FnMut(usize, &[f32; ROWS * COLS]),
) {
    use std::arch::asm;
    assert!(rows.is_multiple_of(ROWS) && pairs.is_multiple_of(PAIRS), "operands not padded to whole tiles");
    assert!(a_pairs.len() >= rows * pairs && panel.len() >= pairs * COLS, "operands too short");
    let mut block = [0.0f32; ROWS * COLS];
    if pairs == 0 {
        (0..rows).step_by(ROWS).for_each(|r0| emit(r0, &block));
        return;
    }
    // SAFETY: the CPU has AMX and the process holds the tiles (the caller's contract).
    unsafe { asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack, readonly)) };
    let a_stride = pairs * 4; // bytes from one row of the left operand to the next
    for r0 in (0..rows).step_by(ROWS) {
        let top = a_pairs[r0 * pairs..].as_ptr();
        // SAFETY: tiles 4 and 5 read rows r0..r0+16 and r0+16..r0+32 of a_pairs, 64 bytes
        // from each, at pair columns 16·t for t < pairs / 16: inside the [rows × pairs]
        // checked above. Tiles 6 and 7 read 16 panel rows of 128 bytes (the left and right 64
        // of each) per pass: inside the [pairs × 32] panel. The stores write 16 rows of 64
        // bytes into each quarter of `block` [32 × 32]. Tile registers are used nowhere else.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{top} + {a_stride}*1]",
                "tileloadd tmm5, [{bottom} + {a_stride}*1]",
                "tileloadd tmm6, [{b} + {b_stride}*1]",
                "tileloadd tmm7, [{b} + {b_stride}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {top}, 64",
                "add {bottom}, 64",
                "add {b}, 2048",
                "dec {passes}",
                "jnz 2b",
                "tilestored [{c} + {b_stride}*1], tmm0",
                "tilestored [{c} + {b_stride}*1 + 64], tmm1",
                "tilestored [{c} + {b_stride}*1 + 2048], tmm2",
                "tilestored [{c} + {b_stride}*1 + 2112], tmm3",
                top = inout(reg) top => _,
                bottom = inout(reg) top.add(16 * pairs) => _,
                b = inout(reg) panel.as_ptr() => _,
                passes = inout(reg) pairs / PAIRS => _,
                a_stride = in(reg) a_stride,
                b_stride = in(reg) COLS * 4,
                c = in(reg) block.as_mut_ptr(),
                options(nostack),
            );
        }
        emit(r0, &block);
    }
    // SAFETY: releases the tile state configured above.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// # Safety
/// Never callable: [`supported`] is false off x86-64 Linux.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub unsafe fn panel_product(
    _: &[u32],
    _: usize,
    _: usize,
    _: &[u32],
    _: impl FnMut(usize, &[f32; ROWS * COLS]),
) {
    unreachable!("AMX is never reported as supported off x86-64 Linux")
}
