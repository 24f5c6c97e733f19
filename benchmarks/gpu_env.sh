# Sourced by the GPU scripts: install the carried wheels (WHEELS, optional) into /tmp/site and put
# them and the repository on PYTHONPATH. A lent GPU machine has torch but not the project's
# pure-Python dependencies (monai, ignite, mlflow-skinny, ...), and nothing can be fetched there.
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
