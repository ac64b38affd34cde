# concur -- every entry point. `make` builds; `make test` installs what is
# missing (make deps), builds and runs every spec three ways.
#
#   make deps       install missing Debian packages (vendor/debian-packages.txt)
#   make            build/concur, build/lua5.4/concur.so, build/luajit/concur.so,
#                   build/libconcur.{a,so}, build/concur.pc
#   make test       specs under build/concur, lua5.4+module, luajit+module,
#                   then under the ASan+UBSan host (NOASAN=1: without)
#   make sanitize   the specs under ASan+UBSan (host, lua5.4 and luajit
#                   modules) and TSan (host), then make valgrind
#   make valgrind   a workload of every primitive under memcheck
#   make fuzz       libFuzzer on the codec's decoder and encoder (FUZZ_SECONDS=60 each)
#   make bench      benchmarks beside Python and C (QUICK=1 for a short run)
#   make demo       the headline tutorial lesson at full size
#   make install    PREFIX=/usr/local, DESTDIR for staging: bin/concur,
#                   lib/libconcur.{a,so*}, lib/pkgconfig/concur.pc,
#                   include/concur.h, lib/lua/5.4/concur.so (lua5.4),
#                   lib/lua/5.1/concur.so (luajit), share/man/man1/concur.1
#   make uninstall  the same PREFIX and DESTDIR: removes those files
#   make format     clang-format every C file

CC      ?= gcc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
WARN    := -Wall -Wextra -Wno-unused-parameter
BASEFLAGS := -std=gnu11 -D_GNU_SOURCE -pthread $(WARN)
B       ?= build
PREFIX  ?= /usr/local
# where stock interpreters look for C modules under PREFIX by default
# (Debian's lua5.4 and luajit search /usr/local/lib/lua/5.4 and .../5.1)
LUA54_CMOD  ?= $(PREFIX)/lib/lua/5.4
LUAJIT_CMOD ?= $(PREFIX)/lib/lua/5.1
MANDIR  ?= $(PREFIX)/share/man

VERSION := $(shell sed -n 's/.*CONCUR_VERSION "\(.*\)".*/\1/p' include/concur.h)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))
SONAME  := libconcur.so.$(SOMAJOR)

LUA54_CFLAGS := $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUA54_LIBS   := $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4)
# build/concur takes Lua from liblua5.4.a when the -dev package has it: in
# the shared library every call to an exported lua_*/luaL_* function, from
# Lua's own library code as from ours, goes through the PLT (a C function
# called from Lua, select(1), runs 27% faster static; lock acquire+release
# 26%). Linked whole and first, so where the VM's code lands does not move
# with ours (linked after our objects, pure-Lua primes ran 13% slower: the
# same code at other addresses). Modules bind lua_* to the executable's
# (-Wl,-E), one VM even for a module linked against liblua5.4.so.
LUA54_A := $(wildcard $(shell pkg-config --variable=libdir lua5.4 2>/dev/null)/liblua5.4.a)
ifneq ($(LUA54_A),)
LUA54_HOST_PRE  := -Wl,--whole-archive $(LUA54_A) -Wl,--no-whole-archive
LUA54_HOST_LIBS :=
else
LUA54_HOST_PRE  :=
LUA54_HOST_LIBS := $(LUA54_LIBS)
endif
LUAJIT_CFLAGS := $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)

RUNTIME_SRC := $(sort $(wildcard runtime/*.c))
BIND_SRC    := $(sort $(wildcard bindings/*.c))
HOST_SRC    := $(sort $(wildcard host/*.c))
HEADERS     := $(wildcard runtime/*.h bindings/*.h host/*.h include/*.h)

# one object tree per flavour: 5.4 (also the host and libconcur), luajit
OBJ54  := $(patsubst %.c,$(B)/obj54/%.o,$(RUNTIME_SRC) $(BIND_SRC))
OBJJIT := $(patsubst %.c,$(B)/objjit/%.o,$(RUNTIME_SRC) $(BIND_SRC))
OBJHOST := $(patsubst %.c,$(B)/obj54/%.o,$(HOST_SRC))
# extra objects linked into the host only (the ASan build adds tests/asan_fork.c)
HOST_EXTRA ?=

all: $(B)/concur $(B)/lua5.4/concur.so $(B)/luajit/concur.so $(B)/libconcur.a $(B)/libconcur.so $(B)/concur.pc $(B)/include/concur.h

$(B)/obj54/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) -I$(B)/gen $(CFLAGS) -fPIC $(LUA54_CFLAGS) -c $< -o $@

$(B)/objjit/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) -I$(B)/gen $(CFLAGS) -fPIC $(LUAJIT_CFLAGS) -c $< -o $@

# Lua written into the library: lib/concur/pool.lua becomes a C string
# (scripts/embed.lua, run by lua5.4, a build dependency) included by
# bindings/pool.c
$(B)/gen/pool_lua.h: lib/concur/pool.lua scripts/embed.lua
	@mkdir -p $(dir $@)
	lua5.4 scripts/embed.lua pool_lua $< $@

$(B)/obj54/bindings/pool.o $(B)/objjit/bindings/pool.o: $(B)/gen/pool_lua.h

# -z now: symbols bound at start, so a forked child does not fault in
# and redo lazy binding on its first calls (about 12% of a spawn's faults)
$(B)/concur: $(OBJHOST) $(OBJ54) $(HOST_EXTRA)
	$(CC) $(CFLAGS) -pthread -Wl,-E -Wl,-z,now -o $@ $(LUA54_HOST_PRE) $^ $(LUA54_HOST_LIBS) -lreadline -lm -ldl

# modules: no -llua, the interpreter that loads them provides the symbols
$(B)/lua5.4/concur.so: $(OBJ54)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -pthread -shared -o $@ $^ -lm

$(B)/luajit/concur.so: $(OBJJIT)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -pthread -shared -o $@ $^ -lm

$(B)/libconcur.a: $(OBJ54)
	rm -f $@; ar rcs $@ $^

# libconcur.so -> libconcur.so.0 (the SONAME) -> libconcur.so.0.1.0
$(B)/libconcur.so.$(VERSION): $(OBJ54)
	$(CC) $(CFLAGS) -pthread -shared -Wl,-soname,$(SONAME) -o $@ $^ $(LUA54_LIBS) -lm

$(B)/libconcur.so: $(B)/libconcur.so.$(VERSION)
	ln -sf libconcur.so.$(VERSION) $(B)/$(SONAME)
	ln -sf $(SONAME) $@

$(B)/include/concur.h: include/concur.h
	@mkdir -p $(dir $@); cp $< $@

# concur.pc names PREFIX, so it is rewritten whenever PREFIX changes: the
# stamp holds the last PREFIX and is touched only when that differs
$(B)/prefix.stamp: FORCE
	@mkdir -p $(B); [ "$$(cat $@ 2>/dev/null)" = "$(PREFIX)" ] || echo "$(PREFIX)" > $@

$(B)/concur.pc: Makefile include/concur.h $(B)/prefix.stamp
	@printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: concur\nDescription: real concurrency for Lua 5.4: processes, threads, shared lists, pipes, locks, queues\nVersion: %s\nRequires: lua5.4\nLibs: -L$${libdir} -lconcur\nLibs.private: -pthread -lm\nCflags: -I$${includedir}\n' \
	  "$(PREFIX)" "$(VERSION)" > $@

# an embedding program built against the installed-style artifacts
$(B)/embed: tests/embed.c $(B)/libconcur.a $(B)/include/concur.h
	$(CC) $(BASEFLAGS) $(CFLAGS) $(LUA54_CFLAGS) -I$(B)/include -o $@ $< $(B)/libconcur.a $(LUA54_LIBS) -lm -ldl

# a host that loads the module, closes its state (dlclose) and goes on
$(B)/unload: tests/unload.c
	$(CC) $(BASEFLAGS) $(CFLAGS) $(LUA54_CFLAGS) -o $@ $< $(LUA54_LIBS) -ldl

# the allocator on its own: runtime/ only, no Lua
$(B)/arena_test: tests/arena_test.c $(RUNTIME_SRC) runtime/cc.h
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ tests/arena_test.c $(RUNTIME_SRC) -lm

deps:
	@sh scripts/deps.sh

# make test = every spec three ways, then once more under the ASan+UBSan host
# (NOASAN=1 leaves that pass out)
test: deps
	@$(MAKE) --no-print-directory all $(B)/embed $(B)/unload $(B)/arena_test
	@$(if $(NOASAN),true,$(ASAN_MAKE) $(B)/asan/concur)
	@sh scripts/test.sh $(if $(NOASAN),,--with-asan)

# Sanitizer builds live in their own trees. The ASan host links
# tests/asan_fork.c; the modules run under the stock interpreters with
# libasan-fork.so preloaded: clang's static ASan runtime (minus its
# .preinit_array part, which a shared object cannot have) plus the same file.
ASAN_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
TSAN_CFLAGS := -O1 -g -fsanitize=thread
ASAN_MAKE = $(MAKE) --no-print-directory B=$(B)/asan CC=clang OPT=-O1 CFLAGS="$(ASAN_CFLAGS)" \
  HOST_EXTRA=$(B)/asan/obj54/tests/asan_fork.o
ASAN_RT = $(shell clang -print-file-name=libclang_rt.asan-$$(uname -m).a)

$(B)/libasan-fork.so: tests/asan_fork.c
	@rm -rf $(B)/asan-rt && mkdir -p $(B)/asan-rt
	cd $(B)/asan-rt && ar x "$(ASAN_RT)" && rm -f asan_preinit.cpp.o
	clang -O1 -g -fPIC -shared -DCONCUR_ASAN_PRELOAD -o $@ $(B)/asan-rt/*.o tests/asan_fork.c -lpthread -ldl -lrt -lm -lstdc++
	@rm -rf $(B)/asan-rt

sanitize: deps
	@start=$$(date +%s); \
	$(ASAN_MAKE) $(B)/asan/concur $(B)/asan/lua5.4/concur.so $(B)/asan/luajit/concur.so \
	  $(B)/asan/libasan-fork.so && \
	$(MAKE) --no-print-directory B=$(B)/tsan CC=clang OPT=-O1 CFLAGS="$(TSAN_CFLAGS)" $(B)/tsan/concur && \
	$(MAKE) --no-print-directory all && \
	echo "sanitize: builds took $$(($$(date +%s) - start)) s"
	sh scripts/test.sh --sanitize

# tests/valgrind_workload.lua under memcheck (build/concur, lua5.4 and luajit + module)
valgrind: deps all
	sh scripts/valgrind.sh

# libFuzzer on the codec: fuzz_codec feeds the decoder any bytes (seeds:
# tests/fuzz_corpus, real messages); fuzz_encode builds Lua values from the
# bytes and checks encode -> decode -> encode (seeds written by
# tests/make_encode_corpus.lua). FUZZ_SECONDS each; findings land in $(B)/fuzz/.
FUZZ_SECONDS ?= 60
FUZZ_CC = clang -std=gnu11 -D_GNU_SOURCE $(WARN) -g -O1 -fsanitize=fuzzer,address,undefined $(LUA54_CFLAGS)

$(B)/fuzz/fuzz_%: tests/fuzz_%.c $(RUNTIME_SRC) $(BIND_SRC) $(HEADERS) $(B)/gen/pool_lua.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -I$(B)/gen $< $(RUNTIME_SRC) $(BIND_SRC) -o $@ $(LUA54_LIBS) -lm -pthread

fuzz: deps $(B)/fuzz/fuzz_codec $(B)/fuzz/fuzz_encode
	@mkdir -p $(B)/fuzz/corpus $(B)/fuzz/encode_corpus $(B)/fuzz/encode_seeds
	lua5.4 tests/make_encode_corpus.lua $(B)/fuzz/encode_seeds
	$(B)/fuzz/fuzz_codec -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -artifact_prefix=$(B)/fuzz/ \
	  $(B)/fuzz/corpus tests/fuzz_corpus
	$(B)/fuzz/fuzz_encode -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -artifact_prefix=$(B)/fuzz/ \
	  $(B)/fuzz/encode_corpus $(B)/fuzz/encode_seeds

bench: deps all
	sh scripts/bench/run.sh $(if $(QUICK),--quick)

demo: deps all
	$(B)/concur examples/demo.lua

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include \
	  $(DESTDIR)$(LUA54_CMOD) $(DESTDIR)$(LUAJIT_CMOD) $(DESTDIR)$(MANDIR)/man1
	install -m 755 $(B)/concur $(DESTDIR)$(PREFIX)/bin/concur
	install -m 644 $(B)/libconcur.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(B)/libconcur.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libconcur.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(PREFIX)/lib/libconcur.so
	install -m 644 $(B)/concur.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/
	install -m 644 include/concur.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(B)/lua5.4/concur.so $(DESTDIR)$(LUA54_CMOD)/concur.so
	install -m 755 $(B)/luajit/concur.so $(DESTDIR)$(LUAJIT_CMOD)/concur.so
	install -m 644 man/concur.1 $(DESTDIR)$(MANDIR)/man1/concur.1
	@# a real install (not staged) as root into a prefix the dynamic linker
	@# searches: refresh its cache so programs find libconcur.so.0 at once
	@case "$(DESTDIR):$(PREFIX)" in :/usr|:/usr/local) \
	  if [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig || true; fi;; esac

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/concur $(DESTDIR)$(PREFIX)/lib/libconcur.a \
	  $(DESTDIR)$(PREFIX)/lib/libconcur.so $(DESTDIR)$(PREFIX)/lib/$(SONAME) \
	  $(DESTDIR)$(PREFIX)/lib/libconcur.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/pkgconfig/concur.pc \
	  $(DESTDIR)$(PREFIX)/include/concur.h $(DESTDIR)$(LUA54_CMOD)/concur.so \
	  $(DESTDIR)$(LUAJIT_CMOD)/concur.so $(DESTDIR)$(MANDIR)/man1/concur.1

# LuaRocks (rockspecs/concur-scm-1.rockspec, build type make): the module
# for the Lua the rock is built for, with LuaRocks' own variables
# (LUA_INCDIR, CFLAGS, LIBFLAG at build; LIBDIR at install)
rock:
	$(MAKE) --no-print-directory B=$(B) LUA54_CFLAGS="-I$(LUA_INCDIR)" CFLAGS="$(CFLAGS)" $(B)/lua5.4/concur.so

rock-install:
	install -d $(DESTDIR)$(LIBDIR)
	install -m 755 $(B)/lua5.4/concur.so $(DESTDIR)$(LIBDIR)/concur.so

format:
	clang-format -i runtime/*.[ch] bindings/*.[ch] host/*.[ch] include/*.h tests/*.c

clean:
	rm -rf $(B)

.PHONY: all deps test sanitize valgrind fuzz bench demo install uninstall rock rock-install format clean FORCE
FORCE:

# concur.cluster (mpi/cluster.c): its own module linked against MPI, built
# only where pkg-config finds Open MPI (ompi-c) or another MPI (mpi-c); the
# core library and build/concur never link MPI. It finds the codec in the
# concur already loaded (see mpi/cluster.c), so it links neither Lua nor concur.
MPI_PC := $(shell pkg-config --exists ompi-c 2>/dev/null && echo ompi-c || \
            (pkg-config --exists mpi-c 2>/dev/null && echo mpi-c))
ifneq ($(MPI_PC),)
MPI_CFLAGS := $(shell pkg-config --cflags $(MPI_PC))
MPI_LIBS   := $(shell pkg-config --libs $(MPI_PC))
CLUSTER_SO := $(B)/lua5.4/concur/cluster.so $(B)/luajit/concur/cluster.so
all: $(CLUSTER_SO)
cluster: $(CLUSTER_SO)

CLUSTER_SO += $(B)/lua5.4/concur/serve.so $(B)/luajit/concur/serve.so
all: $(CLUSTER_SO)

# the pool's mpi backend, Lua compiled into the module
$(B)/gen/cluster_pool_lua.h: lib/concur/cluster_pool.lua scripts/embed.lua
	@mkdir -p $(dir $@)
	lua5.4 scripts/embed.lua cluster_pool_lua $< $@

# only luaopen_concur_cluster and luaopen_concur_serve are exported
CLUSTER_SRC := mpi/cluster.c mpi/wire.c
CLUSTER_CFLAGS = $(BASEFLAGS) $(CFLAGS) -fPIC -fvisibility=hidden $(MPI_CFLAGS) -I$(B)/gen -shared

$(B)/lua5.4/concur/cluster.so: $(CLUSTER_SRC) mpi/cluster.h $(HEADERS) $(B)/gen/cluster_pool_lua.h
	@mkdir -p $(dir $@)
	$(CC) $(CLUSTER_CFLAGS) $(LUA54_CFLAGS) -o $@ $(CLUSTER_SRC) $(MPI_LIBS) -ldl

$(B)/luajit/concur/cluster.so: $(CLUSTER_SRC) mpi/cluster.h $(HEADERS) $(B)/gen/cluster_pool_lua.h
	@mkdir -p $(dir $@)
	$(CC) $(CLUSTER_CFLAGS) $(LUAJIT_CFLAGS) -o $@ $(CLUSTER_SRC) $(MPI_LIBS) -ldl

# `-l concur.serve` finds luaopen_concur_serve in the same object
$(B)/%/concur/serve.so: $(B)/%/concur/cluster.so
	ln -sf cluster.so $@

# make install / uninstall also place the module beside concur.so
install: install-cluster
uninstall: uninstall-cluster
install-cluster: $(CLUSTER_SO)
	install -d $(DESTDIR)$(LUA54_CMOD)/concur $(DESTDIR)$(LUAJIT_CMOD)/concur
	install -m 755 $(B)/lua5.4/concur/cluster.so $(DESTDIR)$(LUA54_CMOD)/concur/cluster.so
	ln -sf cluster.so $(DESTDIR)$(LUA54_CMOD)/concur/serve.so
	install -m 755 $(B)/luajit/concur/cluster.so $(DESTDIR)$(LUAJIT_CMOD)/concur/cluster.so
	ln -sf cluster.so $(DESTDIR)$(LUAJIT_CMOD)/concur/serve.so
uninstall-cluster:
	rm -f $(DESTDIR)$(LUA54_CMOD)/concur/cluster.so $(DESTDIR)$(LUA54_CMOD)/concur/serve.so \
	  $(DESTDIR)$(LUAJIT_CMOD)/concur/cluster.so $(DESTDIR)$(LUAJIT_CMOD)/concur/serve.so
	-rmdir $(DESTDIR)$(LUA54_CMOD)/concur $(DESTDIR)$(LUAJIT_CMOD)/concur 2>/dev/null
.PHONY: install-cluster uninstall-cluster
else
cluster:
	@echo "concur.cluster: no MPI found by pkg-config (ompi-c, mpi-c): not built (make deps installs Open MPI)"
endif
.PHONY: cluster
