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

int fp_share_pages(const char *loaded_path, const char *source_path, fp_share_result *result, char *err,
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
    if (st.st_size == 0) {
        snprintf(err, err_len, "%s is empty", source_path);
        close(fd);
        return -1;
    }
    /* The whole source, read-only and populated in one go: comparing against it costs no copy
     * and no page fault per page (this runs once per library per PHP thread at start-up). */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t source_size = (size_t)st.st_size;
    const unsigned char *source = mmap(NULL, source_size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (source == MAP_FAILED) {
        snprintf(err, err_len, "mmap of %s: %s", source_path, strerror(errno));
        close(fd);
        return -1;
    }
    int rc = 0;
    for (size_t s = 0; s < lookup.count && rc == 0; s++) {
        const readonly_segment *seg = &lookup.segments[s];
        size_t pages = seg->length / page;
        /* Fault the copy's pages in as a batch too (a hint: older kernels say EINVAL). */
        madvise((void *)seg->address, seg->length, MADV_POPULATE_READ);
        size_t run_start = 0, run_length = 0;
        for (size_t i = 0; i <= pages; i++) {
            size_t offset = (size_t)seg->offset + i * page;
            /* A page must lie wholly inside the source: past its end a mapping would SIGBUS,
             * and the kernel's zero fill of a last partial page is not worth the special case. */
            int equal = i < pages && offset + page <= source_size &&
                        memcmp((const void *)(seg->address + i * page), source + offset, page) == 0;
            if (equal) {
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
    munmap((void *)source, source_size);
    close(fd); /* the new mappings keep the file */
    return rc;
}
