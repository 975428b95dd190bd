#!/bin/sh
# The container's entry point: the exporter, with the mounted configuration when there is one.
#
#   docker run IMAGE                      -> the built-in catalogue (no file mounted), or the
#                                            mounted $DEFENDER_EXPORTER_CONFIG if it exists
#   docker run IMAGE --web.config.file=F  -> the same, plus that flag
#   docker run IMAGE check                -> a one-shot check with the same configuration
#   docker run IMAGE --config.file=OTHER  -> OTHER: an explicit flag wins
#
# A mounted file that cannot be read or parsed is an error (exit 2), never a silent fallback
# to the built-in catalogue.
set -eu
config="${DEFENDER_EXPORTER_CONFIG:-/etc/defender-connectivity-exporter/config.yml}"
explicit=
for arg in "$@"; do
  case "$arg" in
    --config.file|--config.file=*) explicit=1 ;;
  esac
done
if [ -z "$explicit" ] && [ -e "$config" ]; then
  set -- "$@" "--config.file=$config"
fi
exec defender-connectivity-exporter "$@"
