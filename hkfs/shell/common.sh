# Shared by hk.bash and hk.zsh: `hk shell-init` puts it where their placeholder line is
# (bash and zsh read it alike).
# Whether the current directory is inside an hkfs mount (its /proc/self/mounts source is hkfs:STORE).
_hk_hkfs_in_mount() {
    local _src _mnt _rest
    while read -r _src _mnt _rest; do
        [[ $_src == hkfs:* ]] || continue
        _mnt=${_mnt//\\040/ }
        [[ $PWD == "$_mnt" || $PWD == "$_mnt"/* ]] && return 0
    done < /proc/self/mounts
    return 1
}
