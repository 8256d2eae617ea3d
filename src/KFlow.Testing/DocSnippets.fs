// Checks that documentation shows compiled code: the fenced blocks of a markdown page (a
// `<!-- snippet: name -->` line above the fence) must equal the marked regions of a source file.
[<RequireQualifiedAccess>]
module KFlow.Testing.DocSnippets

open System
open System.IO

/// The lines of a text, with Windows line ends read as Unix ones.
let private linesOf (text: string) =
    text.Replace("\r\n", "\n").Split('\n') |> List.ofArray

/// Lines without their common indentation, trailing white space and surrounding blank lines.
let private dedent (lines: string list) =
    let lines = lines |> List.map (fun l -> l.TrimEnd())

    let cut =
        match lines |> List.filter (fun l -> l <> "") with
        | [] -> 0
        | xs -> xs |> List.map (fun l -> l.Length - l.TrimStart().Length) |> List.min

    lines
    |> List.map (fun l -> if l = "" then l else l.Substring cut)
    |> List.skipWhile ((=) "")
    |> List.rev
    |> List.skipWhile ((=) "")
    |> List.rev
    |> String.concat "\n"

/// The name in a `<!-- snippet: name ... -->` line: the first word after `snippet:`.
let private markerName (line: string) =
    line.Trim().Substring("<!-- snippet:".Length).Replace("-->", " ").Trim().Split(' ')[0]

/// The repository root: the first directory above the running assembly that holds a `.sln` or
/// `.slnx` file. Raises an exception naming the start directory when there is none.
let repoRoot () : string =
    let holdsSolution (dir: DirectoryInfo) =
        dir.EnumerateFiles "*.sln" |> Seq.isEmpty |> not
        || dir.EnumerateFiles "*.slnx" |> Seq.isEmpty |> not

    let rec up (dir: DirectoryInfo | null) =
        match dir with
        | null ->
            failwithf
                "No directory above %s holds a .sln or .slnx file; run the tests from a clone of the repository."
                AppContext.BaseDirectory
        | dir when holdsSolution dir -> dir.FullName
        | dir -> up dir.Parent

    up (DirectoryInfo AppContext.BaseDirectory)

/// Every fenced block of `language` (e.g. "fsharp") in a markdown page, in order, as (name, body):
/// the name comes from a `<!-- snippet: name -->` line above the fence (blank lines between are
/// allowed; words after the name are ignored), None when there is no such line. Bodies are dedented.
let fencesOf (language: string) (markdown: string) : (string option * string) list =
    let fence = "```" + language

    let rec go acc (name: string option) (lines: string list) =
        match lines with
        | [] -> List.rev acc
        | l :: rest when l.Trim() = fence ->
            let body = rest |> List.takeWhile (fun l -> l.Trim() <> "```")
            go ((name, dedent body) :: acc) None (List.skip (min rest.Length (body.Length + 1)) rest)
        | l :: rest when l.Trim().StartsWith "<!-- snippet:" -> go acc (Some(markerName l)) rest
        | l :: rest -> go acc (if l.Trim() = "" then name else None) rest

    go [] None (linesOf markdown)

/// The named fenced blocks of `language` in a markdown page, in order, as (name, dedented body).
let snippetsOf (language: string) (markdown: string) : (string * string) list =
    fencesOf language markdown
    |> List.choose (fun (name, body) -> name |> Option.map (fun n -> n, body))

/// The marked regions of a source file, in order, as (name, dedented body): the lines between a
/// `//[name]` line and the next `//[/name]` line (to the end of the file when that is missing).
let regionsOf (source: string) : (string * string) list =
    let lines = linesOf source

    lines
    |> List.indexed
    |> List.choose (fun (i, l) ->
        let t = l.Trim()

        if t.StartsWith "//[" && not (t.StartsWith "//[/") && t.EndsWith "]" then
            let name = t.Substring(3, t.Length - 4)

            let body =
                lines
                |> List.skip (i + 1)
                |> List.takeWhile (fun l -> l.Trim() <> $"//[/{name}]")

            Some(name, dedent body)
        else
            None)

/// What is wrong between a page's `language` blocks and a source's regions, one message a problem:
/// a block without a snippet line, a snippet without a region, a region not shown, and a snippet
/// that differs from its region. Empty when the page shows exactly the regions.
let problems (language: string) (markdown: string) (source: string) : string list =
    let blocks = fencesOf language markdown
    let regions = regionsOf source |> Map.ofList

    let shown = blocks |> List.choose fst |> Set.ofList

    [
        if blocks.IsEmpty then
            $"The page has no ```{language} block."

        for name, body in blocks do
            match name with
            | None -> $"A ```{language} block has no <!-- snippet: name --> line above it:\n{body}"
            | Some name ->
                match Map.tryFind name regions with
                | None -> $"The snippet {name} has no //[{name}] region in the source."
                | Some region when region <> body ->
                    $"The snippet {name} differs from its region.\nShown:\n{body}\nCompiled:\n{region}"
                | Some _ -> ()

        for KeyValue(name, _) in regions do
            if not (shown.Contains name) then
                $"The region {name} is not shown on the page."
    ]

/// Raises an exception listing the problems (see `problems`) when the markdown file at `pagePath`
/// does not show exactly the regions of the source file at `sourcePath`. A relative path is read
/// from `repoRoot ()`, e.g. `expectPageShowsRegions "fsharp" "docs/guide.md" "tests/X/GuideTests.fs"`.
let expectPageShowsRegions (language: string) (pagePath: string) (sourcePath: string) : unit =
    let read (path: string) =
        File.ReadAllText(
            if Path.IsPathRooted path then
                path
            else
                Path.Combine(repoRoot (), path)
        )

    match problems language (read pagePath) (read sourcePath) with
    | [] -> ()
    | found ->
        failwithf
            "%s does not show exactly the regions of %s:\n%s"
            pagePath
            sourcePath
            (String.concat "\n" found)
