# hkfs shell integration for bash: eval "$(hk shell-init bash)"
# HK_BIN names the hk command (default: hk).

@COMMON@

# >>> commands
# The paper's commands, typed bare as its users did (akl //workshop; ldf).
for _hk_c in @PAPER_COMMANDS@; do
    eval "function $_hk_c { command \"\${HK_BIN:-hk}\" $_hk_c \"\$@\"; }"
done
unset _hk_c
# <<< commands

# >>> ls
# The paper's `ls ,` (the CKL's matches, shared names counted: main.tex(3)) and
# `ls //a//b` go to `hk ls`; every other ls is the system's. With options hk ls does
# not know (`ls -l ,`), the system ls lists the specs' mount paths (`hk path`).
function ls {   # not `ls() {`: an alias ls would be expanded in that form
    local _a _hk=0 _opts=0
    for _a in "$@"; do
        case $_a in ,*|//*) _hk=1 ;; -1) ;; -*) _opts=1 ;; esac
    done
    if (( ! _hk )); then
        command ls "$@"
    elif (( ! _opts )); then
        command "${HK_BIN:-hk}" ls "$@"
    else
        local _args=() _paths _p
        for _a in "$@"; do
            case $_a in
                ,*|//*) _paths=$(command "${HK_BIN:-hk}" path "$_a") || return
                        while IFS= read -r _p; do _args+=("$_p"); done <<< "$_paths" ;;
                *) _args+=("$_a") ;;
            esac
        done
        command ls "${_args[@]}"
    fi
}
# <<< ls

# >>> prompt
# The paper's prompt shows the CKL in parentheses at the right (zsh's RPROMPT);
# bash draws it at the right edge before the ordinary prompt. `hk prompt` runs
# only when the current directory is inside an hkfs mount.
_hk_hkfs_precmd() {
    HK_CKL=
    if _hk_hkfs_in_mount; then
        # Fast path: an ordinary directory's DKL is its user.hk.dkl attribute (no Python start-up);
        # in a keyword view (no such attribute) `hk prompt` gives the view's list.
        HK_CKL=$(getfattr --only-values -n user.hk.dkl . 2>/dev/null) ||
            HK_CKL=$(command "${HK_BIN:-hk}" prompt 2>/dev/null)
    fi
}
_hk_hkfs_rprompt() {
    [[ -n $HK_CKL ]] && printf '%*s\r' "${COLUMNS:-80}" "($HK_CKL)"
}
case ";${PROMPT_COMMAND:-};" in
    *";_hk_hkfs_precmd;"*) ;;
    *) PROMPT_COMMAND="_hk_hkfs_precmd${PROMPT_COMMAND:+;$PROMPT_COMMAND}" ;;
esac
case $PS1 in
    *_hk_hkfs_rprompt*) ;;
    *) PS1='\[$(_hk_hkfs_rprompt)\]'"$PS1" ;;
esac
# <<< prompt

# >>> completion
# Keyword completion (paper 4.1): '//a/b' completes to HKs with that prefix and
# as many levels; a word without '//' to every HK whose last component starts
# with it ('foot' -> //movie/footloose //sports/football). Other words: files.
_HK_SUBCOMMANDS="@SUBCOMMANDS@"
# The candidates for a word, one a line. Inside a mount the daemon answers them: the
# attribute user.hk.complete.WORD of '.' (a few ms; `hk complete` starts Python, ~0.4 s,
# and serves only a daemon older than that attribute).
_hk_hkfs_candidates() {
    _hk_hkfs_in_mount || return 0
    getfattr --only-values -n "user.hk.complete.$1" . 2>/dev/null ||
        command "${HK_BIN:-hk}" complete -- "$1" 2>/dev/null
}
_hk_hkfs_complete() {
    local cur=${COMP_WORDS[COMP_CWORD]} sub=${COMP_WORDS[0]##*/} pos=$COMP_CWORD kw=0
    if [[ $sub == hk ]]; then
        if (( COMP_CWORD == 1 )); then
            COMPREPLY=( $(compgen -W "$_HK_SUBCOMMANDS" -- "$cur") )
            return 0
        fi
        sub=${COMP_WORDS[1]}
        pos=$((COMP_CWORD - 1))
    fi
    case $sub in
        mkkw|rmkw|akl|rkl|kw) kw=1 ;;
        atkw|dtkw) (( pos == 1 )) && kw=1 ;;
        ldf|ls|path|rme|info|chfn) [[ $cur == //* || $cur == ,* ]] && kw=1 ;;
    esac
    [[ $cur == -* ]] && kw=0
    (( kw )) || return 0
    local IFS=$'\n'
    COMPREPLY=( $(_hk_hkfs_candidates "$cur") )
    (( ${#COMPREPLY[@]} )) && compopt -o nospace 2>/dev/null
    # Mode 2 ('foo' -> //food //movie/footloose ...): the candidates share no prefix with the
    # word, and on the first Tab (COMP_TYPE 9) readline would replace it by their common prefix
    # '//'. Offering the word too keeps it; the second Tab lists, menu-complete cycles (paper Fig. 4).
    if [[ ${COMP_TYPE:-} == 9 && ${#COMPREPLY[@]} -gt 1 && $cur != *//* ]]; then
        COMPREPLY+=("$cur")
    fi
    return 0
}
complete -o default -F _hk_hkfs_complete hk @PAPER_COMMANDS@
# <<< completion

# >>> ctrl-u
# The paper's key (Figs. 3-4): each Ctrl-U puts the next candidate in (readline's
# menu-complete). readline binds the terminal's kill character, Ctrl-U, to
# unix-line-discard whenever it starts reading a line, over our binding, unless
# bind-tty-special-chars is off. Only with `hk shell-init bash --ctrl-u`.
if [[ $- == *i* ]]; then
    bind 'set bind-tty-special-chars off'
    bind '"\C-u": menu-complete'
fi
# <<< ctrl-u
