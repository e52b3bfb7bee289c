"""C fragments shared by this package's eBPF programs (bpfprobe, tpprobe, sendtrace, record): one text,
so a fix reaches every program.  Each program defines what a fragment uses before including it: ``SUB``
and ``NB`` (the log-linear histogram of measure/histogram.py: SUB sub-bucket bits, NB buckets),
``NCTX``, ``STACK_EVERY``, ``S_LOST`` and ``bump()``.
"""

# udps_bucket(v): v's log-linear bucket (histogram.bucket_bounds_ns inverts it), the last one for anything beyond.
LOG2_BUCKET = r"""static __always_inline u32 udps_log2(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

static __always_inline u32 udps_bucket(u64 v)
{
    if (v < (1 << SUB))
        return (u32)v;
    u32 l = udps_log2(v);
    u32 b = ((l - SUB + 1) << SUB) + (u32)((v >> (l - SUB)) & ((1 << SUB) - 1));
    return b < NB ? b : NB - 1;
}
"""

# Where releases ran: kernel stacks by id, and sampled releases per (context, stack id), per-CPU counts (no
# atomics).  A failed stack id (hash collision, map full) is counted as lost.  The stack's value size bounds
# the unwinding: STACK_DEPTH frames, not perf's 127.
STACK_MAPS = r"""#define STACK_DEPTH 20
struct stack_key { u32 cx; s32 id; };
struct stack_ips { u64 ip[STACK_DEPTH]; };
BPF_TABLE("stacktrace", int, struct stack_ips, stacks, 4096);
BPF_PERCPU_HASH(stack_counts, struct stack_key, u64, 1024);
BPF_PERCPU_ARRAY(stack_seen, u64, NCTX);  /* releases per context on this CPU since the run began */
"""

# count_stack(ctx, cx): every STACK_EVERY-th release of context cx on this CPU (the first included) takes its stack.
COUNT_STACK = r"""static __always_inline void count_stack(void *ctx, u32 cx)
{
#if STACK_EVERY
    u64 *seen = stack_seen.lookup(&cx);
    if (!seen || (*seen)++ % STACK_EVERY)
        return;
    struct stack_key k = {};
    k.cx = cx;
    k.id = stacks.get_stackid(ctx, 0);
    if (k.id >= 0) {
        u64 *n = stack_counts.lookup(&k);
        if (n) {
            (*n)++;
            return;
        }
        u64 one = 1;
        if (stack_counts.update(&k, &one) == 0)
            return;
    }
    bump(S_LOST);
#endif
}
"""

# Raw sys_enter(struct pt_regs *regs, long id) and sys_exit(struct pt_regs *regs, long ret) hand over the
# saved registers: udps_syscall_args(regs, args) reads the syscall's six arguments from them and
# udps_syscall_nr(regs) its number (sys_exit has it only there), at the pt_regs offsets of the kernel's BTF
# (tploader.syscall_cflags: OFF_DI .. OFF_R9, OFF_ORIG_AX).  Needs nothing defined before it.
SYSCALL_ARGS = r"""static inline __attribute__((always_inline)) u64 udps_reg(u64 regs, u64 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(regs + off));
    return v;
}

static inline __attribute__((always_inline)) void udps_syscall_args(u64 regs, u64 *args)
{
    args[0] = udps_reg(regs, OFF_DI);
    args[1] = udps_reg(regs, OFF_SI);
    args[2] = udps_reg(regs, OFF_DX);
    args[3] = udps_reg(regs, OFF_R10);
    args[4] = udps_reg(regs, OFF_R8);
    args[5] = udps_reg(regs, OFF_R9);
}

static inline __attribute__((always_inline)) u64 udps_syscall_nr(u64 regs)
{
    return udps_reg(regs, OFF_ORIG_AX);
}
"""
