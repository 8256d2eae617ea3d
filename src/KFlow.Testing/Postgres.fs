// Placeholder: filled in by the foundation work.
namespace KFlow.Testing
