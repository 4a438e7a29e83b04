# hkfs shell integration for zsh: eval "$(hk shell-init zsh)"
# HK_BIN names the hk command (default: hk).

# >>> commands
# The paper's commands, typed bare as its users did (akl //workshop; ldf).
for _hk_c in @PAPER_COMMANDS@; do
    eval "function $_hk_c { command \"\${HK_BIN:-hk}\" $_hk_c \"\$@\"; }"
done
unset _hk_c
# <<< commands

# >>> ls
# The paper's `ls ,` (the CKL's matches, shared names counted: main.tex(3)) and
# `ls //a//b` go to `hk ls`; every other ls is the system's.
function ls {   # not `ls() {`: an alias ls would be expanded in that form
    local _a _hk=0
    local -a _args
    for _a in "$@"; do
        case $_a in ,*|//*) _hk=1 ;; esac
    done
    if (( _hk )); then
        for _a in "$@"; do
            case $_a in -1) _args+=(-1) ;; -*) ;; *) _args+=("$_a") ;; esac
        done
        command "${HK_BIN:-hk}" ls "${_args[@]}"
    else
        command ls "$@"
    fi
}
# <<< ls

# >>> prompt
# The paper's prompt: the CKL in parentheses on the right (RPROMPT).
_hk_hkfs_in_mount() {
    local _src _mnt _rest
    while read -r _src _mnt _rest; do
        [[ $_src == hkfs:* ]] || continue
        _mnt=${_mnt//\\040/ }
        [[ $PWD == "$_mnt" || $PWD == "$_mnt"/* ]] && return 0
    done < /proc/self/mounts
    return 1
}
_hk_hkfs_precmd() {
    HK_CKL=
    if _hk_hkfs_in_mount; then
        # Fast path: an ordinary directory's DKL is its user.hk.dkl attribute (no Python start-up);
        # in a keyword view (no such attribute) `hk prompt` gives the view's list.
        HK_CKL=$(getfattr --only-values -n user.hk.dkl . 2>/dev/null) ||
            HK_CKL=$(command "${HK_BIN:-hk}" prompt 2>/dev/null)
    fi
}
autoload -Uz add-zsh-hook
add-zsh-hook precmd _hk_hkfs_precmd
setopt PROMPT_SUBST
RPROMPT='${HK_CKL:+($HK_CKL)}'
# <<< prompt

# >>> completion
# Keyword completion (paper 4.1): '//a/b' completes to HKs with that prefix and
# as many levels; a word without '//' to every HK whose last component starts
# with it ('foot' -> //movie/footloose //sports/football). Other words: files.
_hk_hkfs_zcomplete() {
    local cur=${words[CURRENT]} sub=${words[1]:t} pos=$((CURRENT - 1)) kw=0
    if [[ $sub == hk ]]; then
        if (( CURRENT == 2 )); then
            compadd -- ${=_HK_SUBCOMMANDS}
            return
        fi
        sub=${words[2]}
        pos=$((CURRENT - 2))
    fi
    case $sub in
        mkkw|rmkw|akl|rkl|kw) kw=1 ;;
        atkw|dtkw) (( pos == 1 )) && kw=1 ;;
        ldf|ls|path|rme|info|chfn) [[ $cur == //* || $cur == ,* ]] && kw=1 ;;
    esac
    [[ $cur == -* ]] && kw=0
    if (( kw )); then
        local -a cands
        cands=( ${(f)"$(command ${HK_BIN:-hk} complete -- "$cur" 2>/dev/null)"} )
        if (( ${#cands} )); then
            # -U: the candidates replace the word (a word without '//' is no prefix of them).
            compadd -U -Q -S '' -- $cands
            # Mode 2 ('foo' -> //food //movie/footloose ...): the candidates share no prefix with
            # the word, so instead of their common prefix '//' show the first and cycle on Tab,
            # as the paper's Ctrl-U does (Fig. 4).
            if [[ $cur != *//* ]] && (( ${#cands} > 1 )); then
                compstate[insert]=menu
            fi
            return
        fi
    fi
    _files
}
_HK_SUBCOMMANDS="@SUBCOMMANDS@"
if (( $+functions[compdef] )); then
    compdef _hk_hkfs_zcomplete hk @PAPER_COMMANDS@
else
    autoload -Uz compinit && compinit -u && compdef _hk_hkfs_zcomplete hk @PAPER_COMMANDS@
fi
# <<< completion
