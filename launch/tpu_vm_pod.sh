#!/usr/bin/env bash
# Usage: ZONE=... BUCKET=... [ACCELERATOR=v4-32] launch/tpu_vm_pod.sh ARGS...
#
# Trains on a Cloud TPU VM pod slice: creates the TPU VM (unless it exists), copies this
# repository to every worker, installs requirements.txt plus jax[tpu] there, mounts a GCS
# bucket on every worker (gcsfuse) as the shared workdir, starts
# `python -m vision_jax.main ARGS --workdir=/mnt/vision_jax/$RUN` on all workers at once
# (one JAX process per host; jax.distributed finds its peers from the TPU metadata), follows
# worker 0's log until training ends, and deletes the TPU VM (KEEP=1 keeps it).
#
#   ZONE=us-central2-b ACCELERATOR=v4-32 BUCKET=my-bucket \
#     TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets \
#     launch/tpu_vm_pod.sh --config configs/imagenet2012_resnet50.py
#
# Environment: ZONE, BUCKET (required); TPU_NAME (vision-jax), ACCELERATOR (v4-32),
# RUNTIME (tpu-ubuntu2204-base), PROJECT (gcloud's default), RUN (a timestamp),
# TFDS_DATA_DIR (where the prepared tfds datasets are; passed to every worker), KEEP.
# Rerunning with the same RUN resumes from the run's latest checkpoint. Every worker must
# see the same workdir: checkpoints are written by all processes together.
set -euo pipefail

: "${ZONE:?set ZONE, e.g. us-central2-b}"
: "${BUCKET:?set BUCKET: a GCS bucket for checkpoints and logs, shared by all workers}"
TPU_NAME=${TPU_NAME:-vision-jax}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
RUN=${RUN:-$(date +%Y%m%d_%H%M%S)}
KEEP=${KEEP:-0}
JAX_VERSION=$(sed -n 's/^jax==//p' "$(dirname "$0")/../requirements.txt")
MOUNT=/mnt/vision_jax
workdir=$MOUNT/$RUN

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then where+=(--project="$PROJECT"); fi

on_all() {  # on_all COMMAND: runs COMMAND on every worker, in parallel.
  "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
}

cleanup() {
  if [[ "$KEEP" != 1 ]]; then
    echo "tpu_vm_pod.sh: deleting $TPU_NAME (KEEP=1 keeps it)." >&2
    "${gcloud_tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet || true
  fi
}

if ! "${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" >/dev/null 2>&1; then
  "${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
fi
trap cleanup EXIT

# The code (this checkout's tracked files, with any edits) and the command each worker
# runs: in the background, so an ssh drop does not stop training, writing its log and exit
# status next to the checkpoints.
stage=$(mktemp -d)
repo=$(cd "$(dirname "$0")/.." && pwd)
git -C "$repo" ls-files -z | tar -C "$repo" --null -T - -czf "$stage/vision_jax.tgz"
cat >"$stage/vision_jax_run.sh" <<END_OF_RUN_SCRIPT
#!/usr/bin/env bash
cd ~/vision_jax
VISION_JAX_DISTRIBUTED=1 TFDS_DATA_DIR=$(printf '%q' "${TFDS_DATA_DIR:-}") \\
  python3 -m vision_jax.main $(printf '%q ' "$@") --workdir=$workdir \\
  >$workdir/logs/\$(hostname).log 2>&1
echo \$? >$workdir/logs/\$(hostname).status
END_OF_RUN_SCRIPT
"${gcloud_tpu[@]}" scp "$stage/vision_jax.tgz" "$stage/vision_jax_run.sh" "$TPU_NAME":~/ \
  "${where[@]}" --worker=all
on_all "rm -rf ~/vision_jax && mkdir ~/vision_jax && tar -C ~/vision_jax -xzf ~/vision_jax.tgz \
  && python3 -m pip install -q -r ~/vision_jax/requirements.txt 'jax[tpu]==$JAX_VERSION'"

# The shared workdir: the bucket mounted at the same path on every worker.
on_all "set -e
if ! command -v gcsfuse >/dev/null; then
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
    | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \
    | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $BUCKET $MOUNT"

# Train: the same command on every worker at once.
on_all "mkdir -p $workdir/logs && rm -f $workdir/logs/\$(hostname).status \
  && (nohup bash ~/vision_jax_run.sh >/dev/null 2>&1 &)"
echo "tpu_vm_pod.sh: training in gs://$BUCKET/$RUN (logs in $RUN/logs); following worker 0." >&2

"${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=0 --command="
  log=$workdir/logs/\$(hostname).log
  until [[ -e \$log ]]; do sleep 5; done
  tail -n +1 -f \$log & tail=\$!
  until [[ -e $workdir/logs/\$(hostname).status ]]; do sleep 10; done
  kill \$tail"

# Every worker's exit status; any non-zero fails the launch (and shows that worker's log).
statuses=$(on_all "h=\$(hostname); until [[ -e $workdir/logs/\$h.status ]]; do sleep 10; done; \
  echo \"\$h \$(cat $workdir/logs/\$h.status)\"")
echo "$statuses" >&2
if grep -E '^[^ ]+ [0-9]+$' <<<"$statuses" | grep -qv ' 0$'; then
  echo "tpu_vm_pod.sh: a worker failed; its log is in gs://$BUCKET/$RUN/logs/." >&2
  exit 1
fi
