/* Sharing the read-only pages of private library copies; see page_share.h. */
#define _GNU_SOURCE /* dl_iterate_phdr */
#include "page_share.h"

#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SEGMENTS 16

typedef struct readonly_segment {
    uintptr_t address; /* page-aligned start in memory */
    off_t offset;      /* page-aligned file offset of `address` */
    size_t length;     /* whole pages */
    int prot;
} readonly_segment;

typedef struct object_lookup {
    const char *path;
    int found;
    size_t count;
    readonly_segment segments[MAX_SEGMENTS];
} object_lookup;

static int find_object(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    object_lookup *lookup = data;
    if (!info->dlpi_name || strcmp(info->dlpi_name, lookup->path) != 0) {
        return 0;
    }
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    lookup->found = 1;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum && lookup->count < MAX_SEGMENTS; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || (ph->p_flags & PF_W) || ph->p_filesz == 0) {
            continue; /* writable (relocated, RELRO, .data, .bss): always private */
        }
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        uintptr_t end = (start + ph->p_filesz + page - 1) & ~(page - 1);
        readonly_segment *seg = &lookup->segments[lookup->count++];
        seg->address = start & ~(page - 1);
        seg->offset = (off_t)(ph->p_offset & ~(page - 1));
        seg->length = end - seg->address;
        seg->prot = ((ph->p_flags & PF_R) ? PROT_READ : 0) | ((ph->p_flags & PF_X) ? PROT_EXEC : 0);
    }
    return 1;
}

/* Map pages [first, first + count) of `seg` from the source. */
static int map_run(const readonly_segment *seg, int fd, size_t first, size_t count, size_t page)
{
    void *at = (void *)(seg->address + first * page);
    void *mapped = mmap(at, count * page, seg->prot, MAP_PRIVATE | MAP_FIXED, fd, seg->offset + (off_t)(first * page));
    return mapped == at ? 0 : -1;
}

static int listed(const uint64_t *pages, size_t n, uint64_t page_index)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pages[mid] == page_index) {
            return 1;
        }
        if (pages[mid] < page_index) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return 0;
}

int fp_share_pages(const char *loaded_path, const char *source_path, const fp_file_identity *compared,
                   const uint64_t *differing, size_t n_differing, fp_share_result *result, char *err,
                   size_t err_len)
{
    memset(result, 0, sizeof(*result));
    object_lookup lookup = {.path = loaded_path};
    dl_iterate_phdr(find_object, &lookup);
    if (!lookup.found) {
        return 1;
    }
    int fd = open(source_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, err_len, "%s: %s", source_path, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    int64_t mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    if ((uint64_t)st.st_dev != compared->device || (uint64_t)st.st_ino != compared->inode ||
        (int64_t)st.st_size != compared->size || mtime_ns != compared->mtime_ns) {
        snprintf(err, err_len, "%s changed since it was compared with %s", source_path, loaded_path);
        close(fd);
        return -1;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t source_size = (size_t)st.st_size;
    int rc = 0;
    for (size_t s = 0; s < lookup.count && rc == 0; s++) {
        const readonly_segment *seg = &lookup.segments[s];
        size_t pages = seg->length / page;
        size_t run_start = 0, run_length = 0;
        for (size_t i = 0; i <= pages; i++) {
            size_t offset = (size_t)seg->offset + i * page;
            /* A page must lie wholly inside the source: past its end a mapping would SIGBUS. */
            int same = i < pages && offset + page <= source_size && !listed(differing, n_differing, offset / page);
            if (same) {
                if (run_length == 0) {
                    run_start = i;
                }
                run_length++;
                continue;
            }
            if (i < pages) {
                result->pages_kept++;
            }
            if (run_length) {
                if (map_run(seg, fd, run_start, run_length, page) != 0) {
                    snprintf(err, err_len, "mmap of %s over %s: %s", source_path, loaded_path, strerror(errno));
                    rc = -1;
                    break;
                }
                result->pages_shared += run_length;
                run_length = 0;
            }
        }
    }
    close(fd); /* the new mappings keep the file */
    return rc;
}
