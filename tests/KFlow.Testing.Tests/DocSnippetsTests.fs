// Tests of DocSnippets: reading fenced blocks and marked regions, and the check that a page shows
// exactly the regions, on small texts written here.
module KFlow.Testing.Tests.DocSnippetsTests

open System
open System.IO
open Expecto
open KFlow.Testing

let private fence = "```"

let private page =
    String.concat "\n" [
        "# A page"
        "<!-- snippet: first (compiled in Foo.fs) -->"
        ""
        fence + "fsharp"
        "let a = 1"
        fence
        "<!-- snippet: other -->"
        fence + "csharp"
        "var b = 2;"
        fence
        fence + "fsharp"
        "let c = 3"
        fence
    ]

let private source =
    String.concat "\r\n" [
        "module Foo"
        "    //[first]"
        "    let a = 1"
        "    //[/first]"
        "//[second]"
        "let  c = 3"
        "//[/second]"
    ]

let tests =
    testList "DocSnippets" [
        testCase "fencesOf names a block by the snippet line above it, blank lines allowed"
        <| fun () ->
            Expect.equal
                (DocSnippets.fencesOf "fsharp" page)
                [ Some "first", "let a = 1"; None, "let c = 3" ]
                "the second F# block has no snippet line: the one above belongs to a C# block"

        testCase "snippetsOf keeps only the named blocks of the language"
        <| fun () ->
            Expect.equal (DocSnippets.snippetsOf "csharp" page) [ "other", "var b = 2;" ] "the C# block"

        testCase "regionsOf reads marked regions dedented, with either line end"
        <| fun () ->
            Expect.equal
                (DocSnippets.regionsOf source)
                [ "first", "let a = 1"; "second", "let  c = 3" ]
                "both regions, dedented"

        testCase "problems lists a block without snippet line, a differing snippet and an unshown region"
        <| fun () ->
            let found = DocSnippets.problems "fsharp" page source
            Expect.hasLength found 2 "no snippet line for the last block; region second not shown"
            Expect.stringContains found[0] "no <!-- snippet: name --> line" "the unnamed block"
            Expect.stringContains found[1] "second is not shown" "the unshown region"

            let changed = source.Replace("let a = 1", "let a = 2")

            Expect.contains
                (DocSnippets.problems "fsharp" page changed)
                "The snippet first differs from its region.\nShown:\nlet a = 1\nCompiled:\nlet a = 2"
                "a changed word is reported"

        testCase "problems is empty when the page shows exactly the regions"
        <| fun () ->
            let named =
                page.Replace(
                    fence + "fsharp\nlet c = 3",
                    "<!-- snippet: second -->\n" + fence + "fsharp\nlet  c = 3"
                )

            Expect.isEmpty (DocSnippets.problems "fsharp" named source) "nothing wrong"
            Expect.isNonEmpty (DocSnippets.problems "fsharp" "no blocks" "") "a page without blocks is wrong"

        testCase "expectPageShowsRegions raises an exception naming both files"
        <| fun () ->
            let dir = Directory.CreateTempSubdirectory "docsnippets"

            try
                let pagePath = Path.Combine(dir.FullName, "page.md")
                let sourcePath = Path.Combine(dir.FullName, "Foo.fs")
                File.WriteAllText(pagePath, page)
                File.WriteAllText(sourcePath, source)

                let e =
                    Expect.throwsC
                        (fun () -> DocSnippets.expectPageShowsRegions "fsharp" pagePath sourcePath)
                        id

                Expect.stringContains e.Message pagePath "the page"
                Expect.stringContains e.Message "second is not shown" "the problem"
            finally
                dir.Delete true

        testCase "repoRoot finds the directory holding the solution"
        <| fun () ->
            let root = DocSnippets.repoRoot ()
            Expect.isTrue (File.Exists(Path.Combine(root, "KFlow.Functional.sln"))) "the solution is there"
    ]
