//! Times `C = A·B` for A `[4096, 576]`, B `[576, 9216]` (f32) with: saelab's encoder
//! engine (what `saelab bench` uses), `matrixmultiply` (one single-threaded call per
//! thread on half of C), the `gemm` crate (its own rayon parallelism), and OpenBLAS
//! (`cblas_sgemm`, its own 2 threads). The engines take turns within every repetition
//! so that a busy machine slows them alike; min and median over the repetitions.

use std::time::Instant;

use rayon::prelude::*;
use saelab_core::kernels::encoder::dense_product;
use saelab_core::Matrix;

#[link(name = "openblas")]
extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cblas_sgemm(
        layout: i32,
        ta: i32,
        tb: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
    fn openblas_set_num_threads(n: i32);
}

fn main() {
    let (m, k, n) = (4096usize, 576usize, 9216usize);
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global()
        .unwrap();
    unsafe { openblas_set_num_threads(2) };
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
        .collect();
    let x = Matrix::from_vec(m, k, a.clone()).unwrap();
    let zero = vec![0.0f32; n];
    let mut out = Matrix::zeros(m, n);
    let mut c = vec![0.0f32; m * n];
    let names = [
        "saelab engine",
        "matrixmultiply (2 calls)",
        "gemm 0.19 (rayon 2)",
        "OpenBLAS (2 threads)",
    ];
    let mut times = vec![Vec::new(); names.len()];
    for rep in 0..=reps {
        for (e, t) in times.iter_mut().enumerate() {
            let s = Instant::now();
            match e {
                0 => dense_product(&x, &b, &zero, &mut out),
                1 => c
                    .par_chunks_mut(m / 2 * n)
                    .enumerate()
                    .for_each(|(h, cc)| unsafe {
                        matrixmultiply::sgemm(
                            m / 2,
                            k,
                            n,
                            1.0,
                            a[h * m / 2 * k..].as_ptr(),
                            k as isize,
                            1,
                            b.as_ptr(),
                            n as isize,
                            1,
                            0.0,
                            cc.as_mut_ptr(),
                            n as isize,
                            1,
                        )
                    }),
                2 => unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(2),
                    )
                },
                _ => unsafe {
                    cblas_sgemm(
                        101,
                        111,
                        111,
                        m as i32,
                        n as i32,
                        k as i32,
                        1.0,
                        a.as_ptr(),
                        k as i32,
                        b.as_ptr(),
                        n as i32,
                        0.0,
                        c.as_mut_ptr(),
                        n as i32,
                    )
                },
            }
            if rep > 0 {
                t.push(s.elapsed().as_secs_f64());
            }
        }
    }
    let flops = 2.0 * (m * k * n) as f64;
    println!("| engine | min (ms) | median (ms) | GFLOP/s at min | GFLOP/s at median |");
    println!("|---|---:|---:|---:|---:|");
    for (name, t) in names.iter().zip(times.iter_mut()) {
        t.sort_by(|p, q| p.total_cmp(q));
        let (mn, md) = (t[0], t[t.len() / 2]);
        println!(
            "| {name} | {:.1} | {:.1} | {:.0} | {:.0} |",
            mn * 1e3,
            md * 1e3,
            flops / mn / 1e9,
            flops / md / 1e9
        );
    }
}
