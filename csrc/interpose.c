/* GOT rewriting for one loaded object; see interpose.h. */
#define _GNU_SOURCE /* dladdr1, RTLD_DL_LINKMAP */
#include "interpose.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* glibc relocates the d_ptr of DT_SYMTAB, DT_STRTAB, DT_JMPREL, DT_RELA in place (l_ld), but not
 * on every architecture or for read-only dynamic sections: an unrelocated one is a small vaddr. */
static uintptr_t dyn_addr(const struct link_map *lm, ElfW(Addr) ptr)
{
    return ptr < lm->l_addr ? lm->l_addr + ptr : ptr;
}

/* Whether `page` is one of the pages the dynamic linker made read-only after relocation
 * (PT_GNU_RELRO; it rounds both ends down to whole pages, see glibc's _dl_protect_relro). */
static int relro_page(const struct link_map *lm, const ElfW(Phdr) *phdr, size_t phnum, uintptr_t page,
                      uintptr_t page_size)
{
    for (size_t i = 0; i < phnum; i++) {
        if (phdr[i].p_type == PT_GNU_RELRO) {
            uintptr_t start = (lm->l_addr + phdr[i].p_vaddr) & ~(page_size - 1);
            uintptr_t end = (lm->l_addr + phdr[i].p_vaddr + phdr[i].p_memsz) & ~(page_size - 1);
            if (page >= start && page < end) {
                return 1;
            }
        }
    }
    return 0;
}

/* The object's program headers, to find its RELRO range. */
typedef struct phdr_query {
    uintptr_t base;
    const ElfW(Phdr) *phdr;
    size_t phnum;
} phdr_query;

static int find_phdr(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    phdr_query *q = arg;
    if (info->dlpi_addr == q->base) {
        q->phdr = info->dlpi_phdr;
        q->phnum = info->dlpi_phnum;
        return 1;
    }
    return 0;
}

static int patch_table(const struct link_map *lm, const phdr_query *ph, const ElfW(Rela) *rela, size_t n,
                       const ElfW(Sym) *symtab, const char *strtab, fp_interposition *table, size_t count)
{
    int patched = 0;
    uintptr_t page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < n; i++) {
        unsigned type = ELF64_R_TYPE(rela[i].r_info);
        if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT) {
            continue;
        }
        const ElfW(Sym) *sym = &symtab[ELF64_R_SYM(rela[i].r_info)];
        if (sym->st_shndx != SHN_UNDEF) {
            continue; /* defined here: not an import */
        }
        const char *name = strtab + sym->st_name;
        for (size_t t = 0; t < count; t++) {
            if (strcmp(name, table[t].name) != 0) {
                continue;
            }
            void **slot = (void **)(lm->l_addr + rela[i].r_offset);
            if (*slot != table[t].replacement) {
                if (table[t].original && !*table[t].original) {
                    *table[t].original = *slot;
                }
                uintptr_t page = (uintptr_t)slot & ~(page_size - 1);
                int relro = relro_page(lm, ph->phdr, ph->phnum, page, page_size);
                if (relro && mprotect((void *)page, page_size, PROT_READ | PROT_WRITE) != 0) {
                    return -1;
                }
                /* Other threads may read the slot (call through it) meanwhile: one aligned
                 * store, never a torn pointer. */
                __atomic_store_n(slot, table[t].replacement, __ATOMIC_RELEASE);
                if (relro) {
                    mprotect((void *)page, page_size, PROT_READ);
                }
            }
            patched++;
            break;
        }
    }
    return patched;
}

static int interpose_map(const struct link_map *lm, fp_interposition *table, size_t count)
{
    phdr_query ph = {lm->l_addr, NULL, 0};
    dl_iterate_phdr(find_phdr, &ph);

    const ElfW(Sym) *symtab = NULL;
    const char *strtab = NULL;
    const ElfW(Rela) *jmprel = NULL, *rela = NULL;
    size_t jmprel_size = 0, rela_size = 0, rela_ent = sizeof(ElfW(Rela));
    ElfW(Sxword) pltrel = DT_RELA;
    for (const ElfW(Dyn) *d = lm->l_ld; d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_SYMTAB: symtab = (const ElfW(Sym) *)dyn_addr(lm, d->d_un.d_ptr); break;
        case DT_STRTAB: strtab = (const char *)dyn_addr(lm, d->d_un.d_ptr); break;
        case DT_JMPREL: jmprel = (const ElfW(Rela) *)dyn_addr(lm, d->d_un.d_ptr); break;
        case DT_PLTRELSZ: jmprel_size = d->d_un.d_val; break;
        case DT_PLTREL: pltrel = d->d_un.d_val; break;
        case DT_RELA: rela = (const ElfW(Rela) *)dyn_addr(lm, d->d_un.d_ptr); break;
        case DT_RELASZ: rela_size = d->d_un.d_val; break;
        case DT_RELAENT: rela_ent = d->d_un.d_val; break;
        default: break;
        }
    }
    if (!symtab || !strtab || pltrel != DT_RELA || rela_ent != sizeof(ElfW(Rela))) {
        errno = EINVAL;
        return -1;
    }
    int total = 0;
    if (jmprel) {
        int n = patch_table(lm, &ph, jmprel, jmprel_size / sizeof(ElfW(Rela)), symtab, strtab, table, count);
        if (n < 0) {
            return -1;
        }
        total += n;
    }
    if (rela) {
        int n = patch_table(lm, &ph, rela, rela_size / sizeof(ElfW(Rela)), symtab, strtab, table, count);
        if (n < 0) {
            return -1;
        }
        total += n;
    }
    return total;
}

int fp_interpose(const void *inside, fp_interposition *table, size_t count)
{
    Dl_info info;
    struct link_map *lm = NULL;
    if (!dladdr1(inside, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm) {
        errno = ENOENT;
        return -1;
    }
    return interpose_map(lm, table, count);
}

int fp_interpose_handle(void *handle, fp_interposition *table, size_t count)
{
    struct link_map *lm = NULL;
    if (dlinfo(handle, RTLD_DI_LINKMAP, &lm) != 0 || !lm) {
        errno = ENOENT;
        return -1;
    }
    return interpose_map(lm, table, count);
}
