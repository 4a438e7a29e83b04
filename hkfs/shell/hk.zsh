# hkfs shell integration for zsh: eval "$(hk shell-init zsh)"
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
    local _a _hk=0 _opts=0 _paths
    local -a _args
    for _a in "$@"; do
        case $_a in ,*|//*) _hk=1 ;; -1) ;; -*) _opts=1 ;; esac
    done
    if (( ! _hk )); then
        command ls "$@"
    elif (( ! _opts )); then
        command "${HK_BIN:-hk}" ls "$@"
    else
        for _a in "$@"; do
            case $_a in
                ,*|//*) _paths=$(command "${HK_BIN:-hk}" path "$_a") || return
                        _args+=( "${(@f)_paths}" ) ;;
                *) _args+=("$_a") ;;
            esac
        done
        command ls "${_args[@]}"
    fi
}
# <<< ls

# >>> prompt
# The paper's prompt: the CKL in parentheses on the right (RPROMPT).
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
# The candidates for a word, one a line. Inside a mount the daemon answers them: the
# attribute user.hk.complete.WORD of '.' (a few ms; `hk complete` starts Python, ~0.4 s,
# and serves only a daemon older than that attribute).
_hk_hkfs_candidates() {
    _hk_hkfs_in_mount || return 0
    getfattr --only-values -n "user.hk.complete.$1" . 2>/dev/null ||
        command ${HK_BIN:-hk} complete -- "$1" 2>/dev/null
}
# How the paper shows a candidate (Figs. 3-4): what the system added in parentheses,
# '//animal/(cat)', '(//movie/)foot(loose)'. $1 the word typed, $2 the candidate.
_hk_hkfs_shown() {
    local word=$1 cand=$2 pre= part j
    if [[ $word == *//* ]]; then pre=${word%//*}; else [[ $word == *,* ]] && pre=${word%,*},; fi
    part=${word#$pre}; cand=${cand#$pre}
    if [[ $cand == "$part"* ]]; then
        j=0                                         # '//' mode: the typed part is a prefix
    else                                            # last-component mode: it starts a component
        j=${cand[(I)/$part*]}
        (( j )) || { print -r -- "$pre$cand"; return; }
    fi
    local head=${cand[1,j]} tail=${cand[j+${#part}+1,-1]}
    print -r -- "$pre${head:+($head)}$part${tail:+($tail)}"
}
_hk_hkfs_zcomplete() {
    local cur=${words[CURRENT]} sub=${words[1]:t} pos=$((CURRENT - 1)) kw=0 c
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
        local -a cands shown
        cands=( ${(f)"$(_hk_hkfs_candidates "$cur")"} )
        if (( ${#cands} )); then
            for c in $cands; do shown+=( "$(_hk_hkfs_shown "$cur" "$c")" ); done
            # -U: the candidates replace the word (a word without '//' is no prefix of them);
            # -d: the list shows them as the paper does, the added part in parentheses.
            compadd -U -Q -S '' -d shown -- $cands
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

# >>> ctrl-u
# The paper's key (Figs. 3-4): each Ctrl-U puts the next candidate in (zle's
# menu-complete). Only with `hk shell-init zsh --ctrl-u`.
[[ -o interactive ]] && bindkey '^U' menu-complete
# <<< ctrl-u
