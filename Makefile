# Two entry points: `make run` (set up, start the app on the demo scene) and `make test` (set up, run the suite).
VENV    := .venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
# Debian packages the venv's wheels need (open3d: libusb, GL, gomp) and the GUI tests (Xvfb, xcb).
APT_PKGS := python3-venv libusb-1.0-0 libgl1 libegl1 libgl1-mesa-dri libgomp1 xvfb xauth \
	libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 \
	libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxcb-xkb1 libxcb-xinerama0 \
	libfontconfig1 libdbus-1-3
export NUMBA_THREADING_LAYER := omp
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup deps run test bench clean

setup: deps $(VENV)/.installed

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "Missing Debian packages. Run:  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

run: setup
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
	  $(PY) main.py; \
	else \
	  echo "no display: reconstructing and labeling the demo scene headless into out/demo"; \
	  $(PY) main.py reconstruct synthetic:0 --out out/demo --max-frames 150 && \
	  $(PY) main.py export out/demo/session --out out/demo/demo.glb && \
	  echo "wrote out/demo/mesh.ply and completed.ply (labeled; MeshLab, Blender), out/demo/demo.glb, trajectory.txt, stats.json"; \
	fi

test: setup
	@XPID=""; \
	if [ -z "$$DISPLAY" ] && command -v Xvfb >/dev/null; then \
	  Xvfb :99 -screen 0 1280x1024x24 -nolisten tcp >/dev/null 2>&1 & XPID=$$!; export DISPLAY=:99; \
	fi; \
	$(PY) -m pytest -p no:dash -q tests; rc=$$?; \
	if [ -n "$$XPID" ]; then kill $$XPID; fi; \
	if [ $$rc = 5 ]; then echo "no tests collected"; rc=0; fi; \
	exit $$rc

bench: setup
	$(PY) -m bench.fusion_bench
	$(PY) -m bench.accuracy_bench
	$(PY) -m bench.sparse_bench
	$(PY) -m bench.nets_bench
	$(PY) -m nets.eval

clean:
	rm -rf $(VENV) out .pytest_cache
