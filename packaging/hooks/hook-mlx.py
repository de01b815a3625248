"""PyInstaller hook for MLX (`engine.mlx_backend`): its native library and Metal kernels.

`mlx` is a namespace package whose `core` extension loads `mlx/lib/libmlx.{so,dylib}` through
an rpath, so the library is collected at that same relative place. On a Mac (the `mlx-metal`
wheel) libmlx looks for its GPU kernels, `mlx.metallib`, beside itself: it goes to `mlx/lib`
too (PyInstaller links the .app's Resources and Frameworks so it is found there). On Linux the
CPU build's BLAS/LAPACK (`mlx_cpu.libs`) follow from libmlx's own dependencies. The C++
headers and CMake files (`mlx/include`, `mlx/share`) are for building extensions: left out.
The extension imports two Python modules itself, invisible to PyInstaller's analysis.
"""

from PyInstaller.utils.hooks import collect_data_files, collect_dynamic_libs

hiddenimports = ["mlx._reprlib_fix", "mlx.__array_api_info", "mlx.nn", "mlx.utils"]
binaries = collect_dynamic_libs("mlx")
datas = collect_data_files("mlx", includes=["**/*.metallib"])
