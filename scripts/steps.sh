# Shared by scripts/results_table.sh and the scripts in experiments/: `bs` runs birdshield with THREADS
# threads, `step NAME COMMAND...` runs COMMAND once per output folder (recorded in $O/done/NAME), so a killed
# script goes on where it stopped.
# Source it after setting O, the output folder.
mkdir -p "$O/done"

bs() { birdshield --threads "${THREADS:-0}" "$@"; }
step() {
  local name=$1
  shift
  if [[ -e $O/done/$name ]]; then echo "done already: $name"; return; fi
  echo "+ $*"
  "$@"
  touch "$O/done/$name"
}
